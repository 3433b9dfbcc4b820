"""Filling the run cache before the papermill batch, in parallel lanes.

    python -m dtlib.study.fill [--lanes N] [--root DIR] [--overrides JSON] PROFILE [NOTEBOOK ...]   (make fill)
    python -m dtlib.study.fill --status PROFILE [NOTEBOOK ...]   (what the cache holds of the plan)

With the attack suite and its check, a notebook is hours of UAP fitting on 2 cores, nearly all of it
in evaluations that do not depend on each other. ``fill`` finds the runs the notebooks' experiments
will ask for (``plan``: each experiment run against stand-ins that record what it asks for), trains
them in this process one at a time at full threads (training wall times are results, C4-wall, so
they are not measured on a shared machine), then evaluates them in ``lanes`` processes that share
the cores and claim a (run, evaluation) each by creating a lock file. The papermill batch then reads
every run from the cache. The selection's results (validation split) decide which other runs an
experiment asks for: the grid's decide the cell, the attackers' comparison at that cell the step of
every other DT run; so the grid is filled first, then that comparison, the plan made again after each.
Scored test evaluations decide only which stronger suites the attack check asks for on runs already
trained (``check``): a pass each at the end.
On 2 cores one thread gives about 70% of two threads' throughput, so two lanes take about 70% of
the time of one. A killed fill resumes: what finished is cached.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from unittest import mock

import torch

from ..checkpoint import CHECKPOINT, CorruptFile, load_verified
from ..config import Config
from ..data import Split
from ..evaluate import journal_file
from ..experiment import RunResult, cached, ensure_trained, evaluate_run, journal_path, metrics_path, run_dir_for
from . import experiments, published
from .check import MAX_LEVEL
from .registry import EXPERIMENTS
from .settings import NOTEBOOKS, Study, attacker, setup

# what an experiment reads from a run's metrics, for runs not evaluated yet (the plan's stand-in)
PLACEHOLDER = {"clean_acc": 0.5, "fooling_rate": 0.5, "uap_acc": 0.5, "random_fooling_rate": 0.1,
               "fooling_by": "placeholder", "uap_acc_by": "placeholder",
               # the attack check climbs to a stronger suite only between scored evaluations
               "placeholder": True}


def _placeholder_uaps(device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every UAP key an evaluation may hold (head 0, the ensemble; fooling, accuracy, targeted winners), zeros."""
    return {f"{k}{part}": torch.zeros(1, 3, 32, 32, device=device)
            for k in ("head0", "ensemble") for part in ("", "/uap_acc", "/targeted")}


def plan(study: Study, notebooks: list[str]) -> list[Config]:
    """The configs ``notebooks``' experiments would run (train and evaluate), in the order they ask,
    each once: found by running the experiments with ``Study.run`` answering from the run cache
    (placeholders where a run is not evaluated yet) and with timing, data, model loading and
    results writing replaced by stand-ins. Nothing is trained, evaluated or written."""
    asked: dict[tuple[str, str], Config] = {}
    runs = study.dir / "runs"

    def recorded(self: Study, log: Callable[[str], None] = print, **o: Any) -> RunResult:
        cfg = self.config.replace(**o)
        where = run_dir_for(cfg, runs)
        asked.setdefault((where.name, cfg.eval_hash()), cfg)
        if cached(cfg, runs):
            return RunResult(cfg, where, json.loads(metrics_path(where, cfg).read_text()))
        keys = dict.fromkeys("ensemble" if m == "ensemble" and cfg.heads > 1 else f"head{cfg.eval_head}" for m in cfg.modes)
        # a targeted evaluation's stand-in has the targeted rate too: the attack check compares it with
        # that of a cached evaluation, where only one of the two is done
        fields = {**PLACEHOLDER, "n_fit": cfg.uap_fit_size, **({"targeted_success": 0.5} if cfg.eval_target >= 0 else {})}
        return RunResult(cfg, where, {"eval": {k: dict(fields) for k in keys},
                                      "train": {"wall_s": 1.0}, "provenance": {}})

    def timings(*args: Any, **kw: Any) -> dict[str, dict[str, Any]]:
        cases = args[1]
        return {k: {"median_s": 1.0, "ratio": 1.0, "ratio_quartiles": [1.0, 1.0], "memory": {"peak_mb": 0.0}}
                for k in cases}

    def uap_metrics(res: RunResult, sets: list[dict[str, torch.Tensor]], target: int) -> list[dict[str, dict[str, float]]]:
        return [{k: {**PLACEHOLDER, "asr": 0.5, "targeted_success": 0.5 if target >= 0 else None}
                 for k in res.metrics["eval"]} for _ in sets]

    # transfer's models: every model is read as one head ("head0", which every evaluation scores)
    images = Split(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10))
    model = SimpleNamespace(scores=lambda x, mode: torch.zeros(len(x), 10, device=x.device))
    stand_ins = {"save": lambda study, notebook, payload, t0: payload, "time_training_steps": timings,
                 "inference_latency": timings, "load_data": lambda cfg: (images, images, images),
                 "load_model": lambda run_dir, device: (model, Config()),
                 "load_uaps": lambda run_dir, cfg, device="cpu": _placeholder_uaps(device)}
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(Study, "run", recorded))
        for name, fn in stand_ins.items():
            for module in (experiments, published):
                if hasattr(module, name):
                    stack.enter_context(mock.patch.object(module, name, fn))
        stack.enter_context(mock.patch.object(published, "uap_metrics", uap_metrics))
        for nb in notebooks:
            EXPERIMENTS[nb](study, log=lambda s: None)
    return list(asked.values())


def attacker_of(cfg: Config) -> dict[str, Any]:
    """The training-time attacker fields of a DT config, as ``settings.attacker`` gives them."""
    return {"uap_objective": cfg.uap_objective, "uap_every": cfg.uap_every, "uap_fraction": cfg.uap_fraction,
            "perturbed_fraction": cfg.perturbed_fraction}


def fill_runs(study: Study, notebooks: list[str], lanes: int = 2, log: Callable[[str], None] = print) -> list[Config]:
    """Train and evaluate every run of ``plan`` in three stages, each planned again from the results
    of the one before: the selection grid, then the training-time attackers' comparison at the cell
    the grid picks (which decides the step of every other DT run), then the rest, and last the
    attack check's stronger suites that the rest's scores ask for (a pass per level of its
    ladder); returns the configs."""
    runs = study.dir / "runs"
    mine = attacker(study.grid_attacker[0])
    grid_seeds = set(study.seeds[:study.ablation_seeds])
    stages = (lambda c: c.eval_split == "val" and (c.method != "dt" or (attacker_of(c) == mine and c.seed in grid_seeds)),
              lambda c: c.eval_split == "val",
              lambda c: True)
    for stage in stages:
        todo = [c for c in plan(study, notebooks) if stage(c)]
        trained = {run_dir_for(c, runs): c for c in todo if not cached(c, runs)}
        for cfg in trained.values():  # here, alone: the lanes only evaluate
            ensure_trained(cfg, runs_dir=runs, progress=False, log=log)
        evaluate(todo, runs, lanes, log)
    # the attack check also takes each evaluation whose fits reached the cap (``check.unsettled``), and
    # climbs to the next suite where the stronger one raised a figure (``check.attack_check``): both
    # known only once the evaluations before them are scored, a pass each, on runs trained above
    checks: list[Config] = []
    for _ in range(MAX_LEVEL + 1):
        more = [c for c in plan(study, notebooks) if not cached(c, runs) and _finished(run_dir_for(c, runs))]
        if not more:
            break
        evaluate(more, runs, lanes, log)
        checks += more
    left = [c for c in plan(study, notebooks) if not cached(c, runs)]
    if left:
        raise RuntimeError(f"{len(left)} planned evaluations are still missing after the fill, e.g. {left[0].method} "
                           f"seed {left[0].seed}: an experiment asks for runs that depend on more than the selection "
                           "and the scored evaluations.")
    return todo + checks


def evaluate(configs: list[Config], runs: Path, lanes: int, log: Callable[[str], None] = print) -> None:
    """Evaluate the configs not cached yet: here with one lane, else in ``lanes`` processes."""
    todo = [c for c in configs if not cached(c, runs)]
    if lanes <= 1 or len(todo) <= 1:
        for cfg in todo:
            evaluate_run(run_dir_for(cfg, runs), cfg, log=log)
        return
    claims = runs / ".claims"
    shutil.rmtree(claims, ignore_errors=True)  # claims of a killed fill's lanes
    claims.mkdir(parents=True)
    threads = max(1, torch.get_num_threads() // lanes)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"runs": str(runs), "threads": threads, "configs": [c.to_dict() for c in todo]}, fh)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs: list[subprocess.Popen] = []
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "dtlib.study.fill", "--lane", fh.name], env=env)
                 for _ in range(lanes)]
        failed = [p.wait() for p in procs]
    finally:
        for p in procs:  # interrupted: no lane outlives the fill
            if p.poll() is None:
                p.terminate()
        os.unlink(fh.name)
    if any(failed):
        raise RuntimeError(f"a lane of the fill failed (exit codes {failed}); its error is printed above.")
    shutil.rmtree(claims, ignore_errors=True)


def lane(spec: str) -> None:
    """One lane: evaluate each config of the ``spec`` file that no other lane has claimed, the
    costliest (most heads) first so the lanes end together."""
    job = json.loads(Path(spec).read_text())
    torch.set_num_threads(job["threads"])
    runs, parent = Path(job["runs"]), os.getppid()
    for cfg in sorted((Config.from_dict(c) for c in job["configs"]), key=lambda c: -c.heads):
        if os.getppid() != parent:  # the fill was killed: stop rather than race the next one
            return
        where = run_dir_for(cfg, runs)
        try:
            os.close(os.open(runs / ".claims" / f"{where.name}-{cfg.eval_hash()}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        if not cached(cfg, runs):  # evaluate_run never trains: a run not trained by the fill is an error
            evaluate_run(where, cfg, log=lambda s: print(f"[lane {os.getpid()}] {s}", flush=True))


def _under_way(cfg: Config, runs: Path) -> bool:
    """Whether ``cfg``'s evaluation is not cached but a suite of one of its modes saved fits."""
    journal = journal_path(run_dir_for(cfg, runs), cfg)
    return not cached(cfg, runs) and any(journal_file(journal, m).exists() for m in cfg.modes)


def _finished(run_dir: Path) -> bool:
    try:
        return bool(load_verified(run_dir / CHECKPOINT).get("finished"))
    except (FileNotFoundError, CorruptFile):
        return False


def status(study: Study, notebooks: list[str]) -> dict[str, dict[str, int]]:
    """How far the run cache is from each notebook's ``plan``, as it stands (before the selection is
    evaluated, its winners, the grid's cell and the training-time attacker, are placeholders' and
    the rest of the plan can still change):
    evaluations planned, cached, and under way (fits of a killed or running one saved), runs
    planned and trained. The attack check of an evaluation whose fits reached the cap joins the
    plan only once that evaluation is scored, a level-2 suite once the two levels below it are
    scored and differ. Reads only; nothing is trained, evaluated, moved or written."""
    runs, out = study.dir / "runs", {}
    for nb in notebooks:
        todo = plan(study, [nb])
        dirs = {run_dir_for(c, runs) for c in todo}
        out[nb] = {"evaluations": len(todo), "cached": sum(cached(c, runs) for c in todo),
                   "under_way": sum(_under_way(c, runs) for c in todo),
                   "runs": len(dirs), "trained": sum(_finished(d) for d in dirs)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dtlib.study.fill", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", nargs="?", default="cpu")
    ap.add_argument("notebooks", nargs="*", help=f"default: every one of {', '.join(NOTEBOOKS)}")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--root", default=None, help="folder of runs/ (default: the project)")
    ap.add_argument("--overrides", default=None, help="the notebooks' overrides, as JSON: '{\"seeds\": [0, 1, 2]}'")
    ap.add_argument("--status", action="store_true", help="print how much of the plan the run cache holds; run nothing")
    ap.add_argument("--lane", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.lane:
        return lane(args.lane)
    unknown = [nb for nb in args.notebooks if nb not in NOTEBOOKS]
    if unknown:
        ap.error(f"unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOKS)}.")
    if args.lanes < 1:
        ap.error(f"--lanes {args.lanes} must be at least 1.")
    try:
        study = setup(args.profile, args.overrides, root=args.root, progress=False)
    except ValueError as e:
        ap.error(str(e))
    if args.status:
        for nb, n in status(study, args.notebooks or list(NOTEBOOKS)).items():
            print(f"{nb}: {n['cached']} of {n['evaluations']} evaluations cached, {n['under_way']} under way; "
                  f"{n['trained']} of {n['runs']} runs trained")
        return
    try:
        done = fill_runs(study, args.notebooks or list(NOTEBOOKS), args.lanes)
    except RuntimeError as e:
        ap.exit(1, f"{ap.prog}: {e}\n")
    print(f"{len(done)} evaluations cached in {study.dir / 'runs'}; the notebooks now read them (make reproduce).")


if __name__ == "__main__":
    main()
