"""Fill the run cache of ``01_headline`` in two parallel lanes, so the papermill batch then reads it.

    python scripts/fill_headline.py [profile] [lanes]        (default: cpu 2)

The headline with the attack suite and its check is hours of UAP fitting on 2 cores, nearly all
of it in evaluations that do not depend on each other. This runs them in ``lanes`` processes of one
thread each (on 2 cores, one thread gives about 70% of two threads' throughput, so two lanes finish
in about 70% of the time), each claiming a (run, evaluation) by creating a lock file. Training is
not parallel: it runs in this process at full threads, alone, because the training wall times are
the headline's cost column (C4-wall) and must not be measured on a shared machine. Phases: train the
selection grid; evaluate it (lanes); train every arm and seed; evaluate them and the stronger
suite's check (lanes, largest first). Then ``make reproduce`` (or papermill on 01_headline) finds
every run and evaluation cached and writes the results. A killed fill resumes: finished items are
cached; delete ``runs/.claims`` first so that items claimed by the killed lanes are taken again.
"""
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dtlib.checkpoint import CHECKPOINT, read_checkpoint
from dtlib.data import load_data
from dtlib.experiment import metrics_path, run, run_dir_for
from dtlib.io import write_json
from dtlib.study import setup
from dtlib.study.experiments import arms, select_dt, stronger
from dtlib.train import train

PROFILE = sys.argv[1] if len(sys.argv) > 1 else "cpu"
LANES = int(sys.argv[2]) if len(sys.argv) > 2 else 2
LANE = os.environ.get("FILL_LANE")  # set in the lane processes this script starts
if LANE is not None:
    torch.set_num_threads(1)
STUDY = setup(PROFILE, progress=False)
RUNS = STUDY.dir / "runs"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), f"lane {LANE}" if LANE is not None else "main", msg, flush=True)


def grid() -> list[dict[str, Any]]:
    """The configs ``select_dt`` runs (validation split, the ensemble)."""
    val = dict(eval_split="val", eval_modes="ensemble")
    seeds = STUDY.seeds[:STUDY.ablation_seeds]
    return ([dict(method="dt", heads=5, lambda_div=d, lambda_adv=a, seed=s, **val)
             for s in seeds for d in STUDY.grid_div for a in STUDY.grid_adv]
            + [dict(method=m, heads=1, seed=s, **val) for s in seeds for m in ("standard", "uat")])


def headline() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every arm at every seed, the stronger suite's configs for the check): what ``headline`` runs."""
    a = arms(select_dt(STUDY, log)).values()
    base = [{**o, "seed": s} for s in STUDY.seeds for o in a]
    return base, [{**o, "seed": STUDY.seeds[0], **stronger(STUDY.config)} for o in a]


def ensure_trained(o: dict[str, Any]) -> None:
    cfg = STUDY.config.replace(**o)
    where = run_dir_for(cfg, RUNS)
    ckpt = read_checkpoint(where / CHECKPOINT, cfg, log)
    if not (ckpt and ckpt["finished"]):
        write_json(where / "config.json", cfg.to_dict())
        log(f"training {cfg.method} K={cfg.heads} seed {cfg.seed} -> {where}")
        train(cfg, load_data(cfg)[0], run_dir=where, progress=False, log=log)


def evaluate(items: list[dict[str, Any]]) -> None:
    """Evaluate each item not cached and not claimed by another lane."""
    claims = RUNS / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    for o in sorted(items, key=lambda o: -o["heads"]):  # the costliest first, so the lanes end together
        cfg = STUDY.config.replace(**o)
        where = run_dir_for(cfg, RUNS)
        if metrics_path(where, cfg).exists():
            continue
        try:
            os.close(os.open(claims / f"{where.name}-{cfg.eval_hash()}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        run(cfg, runs_dir=RUNS, progress=False, log=log)


def lanes(phase: str) -> None:
    procs = [subprocess.Popen([sys.executable, __file__, PROFILE, str(LANES)],
                              env={**os.environ, "FILL_LANE": str(i), "FILL_PHASE": phase, "OMP_NUM_THREADS": "1"})
             for i in range(LANES)]
    if any(p.wait() for p in procs):
        sys.exit(f"a lane of the {phase} phase failed; see its log above.")


if __name__ == "__main__":
    if LANE is not None:
        phase = os.environ["FILL_PHASE"]
        evaluate(grid() if phase == "grid" else [o for part in headline() for o in part])
    else:
        for o in grid():
            ensure_trained(o)
        lanes("grid")
        for o in headline()[0]:
            ensure_trained(o)
        lanes("headline")
        log(f"the headline's runs and evaluations are cached in {Path(RUNS)}; now run 01_headline (make reproduce).")
