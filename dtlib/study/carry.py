"""Carrying a fill's run cache to another machine: what it has made, packed into a folder git can hold.

    python -m dtlib.study.carry pack [--root DIR] [--overrides JSON] FOLDER PROFILE [NOTEBOOK ...]   (make pack)
    python -m dtlib.study.carry unpack [--root DIR] FOLDER   (make fill and make reproduce do it first)

A notebook's fill is hours of UAP fitting on 2 cores, often longer than one machine is held, and the
run cache (``runs/``) is not part of the repository. ``pack`` copies, for the plan of the notebooks
(``fill.plan``), each trained run's finished checkpoint less its optimizer state (a finished run is
never resumed, and the weights are what a later evaluation or a notebook's transfer matrix reads),
its config, each cached evaluation (metrics and UAPs) and the saved fits of each evaluation under
way into ``FOLDER/<run>/``. ``unpack`` verifies every file (a checkpoint, UAP or fits file against
its sha256, a metrics file as JSON) and copies it into ``runs/`` where that file is missing; what
the local cache holds is never replaced, and evaluations are never put beside other weights than
their own. A fill started afterwards trains and evaluates only what is still missing, and an
evaluation under way goes on from its saved fits where the suite's key matches (same weights,
fitting images and predictions on them, precision and device kind), else it fits again.

The run folders' names are the training hash, which includes the precision ``auto`` resolved to
(``runtime.precision_name``): a pack made in fp32 serves only fp32 fills. To carry a fill between
CPUs whose ``auto`` differs, pin it on both (``DTLIB_AUTO_PRECISION=fp32``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

from ..checkpoint import CHECKPOINT, CorruptFile, load_verified, save_verified, state_digest
from ..config import MODES, Config
from ..evaluate import journal_file
from ..experiment import cached, journal_path, metrics_path, run_dir_for, uaps_path
from ..io import atomic_path, project_dir
from ..runtime import PRECISION_ENV
from .fill import plan
from .settings import NOTEBOOKS, Study, setup

# a metrics file is trusted only with its UAPs beside it (experiment.run), so it is copied last
ORDER = ("config.json", CHECKPOINT, "uaps-", "partial-", "metrics-")


def _rank(path: Path) -> int:
    return next(i for i, p in enumerate(ORDER) if path.name.startswith(p))


def _check(path: Path) -> None:
    """Raise CorruptFile (one sentence) unless ``path`` reads back: JSON as JSON, a torch file against its digest."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise CorruptFile(f"{path} is not valid JSON (truncated or corrupt).") from None
    else:
        load_verified(path)


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _weights(path: Path) -> str | None:
    """The digest of a finished checkpoint's weights; None if it is missing, unfinished or damaged."""
    if not path.exists():
        return None
    try:
        state = load_verified(path)
    except CorruptFile:
        return None
    return state_digest(state["model"]) if state.get("finished") else None


def _finished_fits(name: str, where: Path) -> bool:
    """Whether ``name`` is the saved fits (``partial-<eval hash>-<mode>.pt``) of an evaluation ``where`` holds finished."""
    return name.startswith("partial-") and (where / f"metrics-{name.split('-')[1]}.json").exists()


def pack(study: Study, notebooks: list[str], folder: str | Path, log: Callable[[str], None] = print) -> Counter[str]:
    """Copy what the study's run cache holds of ``notebooks``' plan into ``folder`` (``pack_runs``)."""
    return pack_runs(plan(study, notebooks), study.dir / "runs", folder, log)


def pack_runs(configs: list[Config], runs: str | Path, folder: str | Path,
              log: Callable[[str], None] = print) -> Counter[str]:
    """Copy what the run cache ``runs`` holds of ``configs`` into ``folder`` (as the module says).
    Weights, UAPs and metrics once packed stay as they are; saved fits are replaced by newer ones
    and removed once their evaluation is packed finished. A run the pack holds with other weights,
    or a damaged file, is left out with a line saying so and counted as ``skipped``. Safe beside a
    running fill (its files are replaced whole; fits that finish meanwhile are left out). Returns
    the counts packed: runs, evaluations, under_way (evaluations with saved fits), skipped."""
    runs, folder, n = Path(runs), Path(folder), Counter({"runs": 0, "evaluations": 0, "under_way": 0, "skipped": 0})

    def skip(why: str) -> None:
        log(f"left out of the pack: {why}")
        n["skipped"] += 1

    packed = set()
    for where in dict.fromkeys(run_dir_for(c, runs) for c in configs):
        dest = folder / where.name
        try:
            state = load_verified(where / CHECKPOINT)
        except FileNotFoundError:
            continue
        except CorruptFile as e:
            skip(str(e))
            continue
        if not state.get("finished"):
            continue
        if not (dest / CHECKPOINT).exists():
            save_verified(dest / CHECKPOINT, {k: v for k, v in state.items() if k != "optimizer"})
        elif _weights(dest / CHECKPOINT) != state_digest(state["model"]):
            skip(f"{dest} holds other weights than {where} (one was trained again); their evaluations cannot be mixed")
            continue
        _copy(where / "config.json", dest / "config.json")
        packed.add(where)
        n["runs"] += 1
    for cfg in configs:
        where = run_dir_for(cfg, runs)
        if where not in packed:
            continue
        dest = folder / where.name
        journals = [journal_file(journal_path(where, cfg), m) for m in MODES]
        try:
            if cached(cfg, runs):
                for f in (uaps_path(where, cfg), metrics_path(where, cfg)):  # a metrics file only beside its UAPs
                    if not (dest / f.name).exists():
                        _check(f)
                        _copy(f, dest / f.name)
                for f in journals:
                    (dest / f.name).unlink(missing_ok=True)
                n["evaluations"] += 1
            elif not (dest / metrics_path(where, cfg).name).exists():
                found = 0
                for f in journals:
                    try:
                        _check(f)
                    except FileNotFoundError:  # none, or its evaluation finished since: the metrics follow next pack
                        continue
                    _copy(f, dest / f.name)
                    found += 1
                n["under_way"] += found > 0
        except CorruptFile as e:
            skip(str(e))
    log(f"packed {n['runs']} runs, {n['evaluations']} evaluations and {n['under_way']} under way into {folder}"
        + (f"; {n['skipped']} left out (above)" if n["skipped"] else ""))
    if configs and not n["runs"] and not n["skipped"]:
        # the commonest cause: a run's key holds its resolved precision, so a fill pinned with the
        # variable is invisible to a pack without it on a CPU whose auto differs
        log(f"none of the plan's runs is trained in {runs}: a fill made with {PRECISION_ENV} set "
            f"(here {os.environ.get(PRECISION_ENV) or 'unset'}) is packed with the same setting")
    return n


def unpack(folder: str | Path, runs: str | Path, log: Callable[[str], None] = print) -> int:
    """Copy every file of a pack in ``folder`` that ``runs`` lacks into it, each verified first; a
    damaged file raises CorruptFile naming it before anything of its run is copied. The pack's run
    is taken where ``runs`` holds it with the same weights finished, or holds no evaluation of it
    and at most an unfinished checkpoint (kept aside as ``checkpoint.pt.unfinished``); a run held
    with other weights (trained here too, on another CPU) or evaluations without weights is left
    as it is, since its evaluations are of those weights. Saved fits of an evaluation finished here or in the pack are
    not copied. Returns the number of files copied."""
    folder, runs = Path(folder), Path(runs)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of packed runs (python -m dtlib.study.carry pack makes one).")
    copied = 0
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        here = runs / run.name
        files = [f for f in run.iterdir() if f.is_file() and not f.name.startswith(".")]
        for f in files:
            if not f.name.startswith(ORDER):
                raise ValueError(f"{f} is not a file a pack holds (config, checkpoint, UAPs, saved fits or metrics).")
            _check(f)
        if not (run / CHECKPOINT).exists():
            raise ValueError(f"{run} holds no {CHECKPOINT}: its evaluations cannot be matched to weights.")
        local = here / CHECKPOINT
        evaluated = any(here.glob("metrics-*")) or any(here.glob("uaps-*"))
        if local.exists() and not evaluated and _unfinished(local):  # nothing of it is evaluated: set it aside
            local.replace(local.with_name(CHECKPOINT + ".unfinished"))
            log(f"{local} was unfinished: kept as {CHECKPOINT}.unfinished, the pack's finished run taken instead")
        elif (local.exists() or evaluated) and _weights(local) != _weights(run / CHECKPOINT):
            log(f"{here} holds other weights than the packed run (trained here too), or evaluations without its "
                f"weights; kept as it is, nothing of the pack copied into it (remove it to take the pack's)")
            continue
        todo = sorted((f for f in files if not (here / f.name).exists()
                       and not _finished_fits(f.name, here) and not _finished_fits(f.name, run)), key=_rank)
        for f in todo:
            _copy(f, here / f.name)
        copied += len(todo)
    log(f"unpacked {copied} files from {folder} into {runs}")
    return copied


def _unfinished(path: Path) -> bool:
    """Whether a checkpoint reads back and says it is unfinished (a damaged one is neither)."""
    try:
        return not load_verified(path).get("finished")
    except CorruptFile:
        return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dtlib.study.carry", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="copy the run cache of the notebooks' plan into FOLDER")
    p.add_argument("folder")
    p.add_argument("profile")
    p.add_argument("notebooks", nargs="*", help=f"default: every one of {', '.join(NOTEBOOKS)}")
    p.add_argument("--overrides", default=None, help="the notebooks' overrides, as JSON")
    u = sub.add_parser("unpack", help="copy what runs/ lacks from FOLDER")
    u.add_argument("folder")
    for s in (p, u):
        s.add_argument("--root", default=None, help="folder of runs/ (default: the project)")
    args = ap.parse_args(argv)
    try:
        if args.command == "unpack":
            unpack(args.folder, Path(args.root or project_dir()) / "runs")
            return
        unknown = [nb for nb in args.notebooks if nb not in NOTEBOOKS]
        if unknown:
            ap.error(f"unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOKS)}.")
        n = pack(setup(args.profile, args.overrides, root=args.root, progress=False), args.notebooks or list(NOTEBOOKS),
                 args.folder)
    except (ValueError, FileNotFoundError) as e:  # CorruptFile is a ValueError
        ap.exit(1, f"{ap.prog}: {e}\n")
    if n["skipped"]:
        ap.exit(1, f"{ap.prog}: {n['skipped']} runs or files were left out of the pack (the lines above say why).\n")


if __name__ == "__main__":
    main()
