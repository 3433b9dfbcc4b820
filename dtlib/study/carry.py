"""Carrying a fill's run cache to another machine: what it has made, packed into a folder git can hold.

    python -m dtlib.study.carry pack [--root DIR] [--overrides JSON] FOLDER PROFILE [NOTEBOOK ...]   (make pack)
    python -m dtlib.study.carry unpack [--root DIR] FOLDER   (make fill and make reproduce do it first)

A notebook's fill is hours of UAP fitting on 2 cores, often longer than one machine is held, and the
run cache (``runs/``) is not part of the repository. ``pack`` copies, for the plan of the notebooks
(``fill.plan``), each trained run's finished checkpoint less its optimizer state (a finished run is
never resumed, and the weights are what a later evaluation or a notebook's transfer matrix reads),
its config, each cached evaluation (metrics and UAPs) and the saved fits of each evaluation under
way into ``FOLDER/<run>/``. ``unpack`` verifies every file (a checkpoint or UAP file against its
sha256, a metrics file as JSON) and copies it into ``runs/`` where that file is missing; what the
local cache holds is never replaced. A fill started afterwards trains and evaluates only what is
still missing, and picks an evaluation under way up at its next fit.

The run folders' names are the training hash, which includes the precision ``auto`` resolved to
(``runtime.precision_name``): a pack made in fp32 serves only fp32 fills. To carry a fill between
CPUs whose ``auto`` differs, pin it on both (``DTLIB_AUTO_PRECISION=fp32``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

from ..checkpoint import CHECKPOINT, CorruptFile, load_verified, save_verified, state_digest
from ..config import MODES
from ..evaluate import journal_file
from ..experiment import cached, journal_path, metrics_path, run_dir_for, uaps_path
from ..io import atomic_path, project_dir
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


def pack(study: Study, notebooks: list[str], folder: str | Path, log: Callable[[str], None] = print) -> Counter:
    """Copy what the run cache holds of ``notebooks``' plan into ``folder`` (as the module says);
    files already packed are kept, saved fits of an evaluation that is now cached are removed.
    Returns the counts packed: runs, evaluations, evaluations under way."""
    runs, folder, n = study.dir / "runs", Path(folder), Counter()
    configs = plan(study, notebooks)
    for where in dict.fromkeys(run_dir_for(c, runs) for c in configs):
        ckpt = where / CHECKPOINT
        if not ckpt.exists():
            continue
        state = load_verified(ckpt)
        if not state.get("finished"):
            continue
        dest = folder / where.name
        if not (dest / CHECKPOINT).exists():
            save_verified(dest / CHECKPOINT, {k: v for k, v in state.items() if k != "optimizer"})
        elif not _same_weights(ckpt, dest / CHECKPOINT):
            raise ValueError(f"{dest} holds other weights than {where} (one of them was trained again); remove one "
                             "of them, since the evaluations of the two cannot be mixed.")
        _copy(where / "config.json", dest / "config.json")
        n["runs"] += 1
    for cfg in configs:
        where = run_dir_for(cfg, runs)
        dest = folder / where.name
        if not (dest / CHECKPOINT).exists():
            continue
        journals = [journal_file(journal_path(where, cfg), m) for m in MODES]
        if cached(cfg, runs):
            for f in (uaps_path(where, cfg), metrics_path(where, cfg)):
                if not (dest / f.name).exists():
                    _check(f)
                    _copy(f, dest / f.name)
            for f in journals:
                (dest / f.name).unlink(missing_ok=True)
            n["evaluations"] += 1
        elif any(f.exists() for f in journals):
            for f in journals:
                if f.exists():
                    _check(f)
                    _copy(f, dest / f.name)
            n["under_way"] += 1
    log(f"packed {n['runs']} runs, {n['evaluations']} evaluations and {n['under_way']} under way into {folder}")
    return n


def unpack(folder: str | Path, runs: str | Path, log: Callable[[str], None] = print) -> int:
    """Copy every file of a pack in ``folder`` that ``runs`` lacks into it, each verified first;
    a damaged file raises CorruptFile naming it, before anything of its run is copied. A run the
    local cache holds with other weights (trained here too, on another CPU) is left alone: its
    evaluations are of those weights. Returns the number of files copied."""
    folder, runs = Path(folder), Path(runs)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of packed runs (python -m dtlib.study.carry pack makes one).")
    copied = 0
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted((f for f in run.iterdir() if f.is_file() and not f.name.startswith(".")), key=_rank)
        for f in files:
            _check(f)
        here = runs / run.name / CHECKPOINT
        if here.exists() and not _same_weights(here, run / CHECKPOINT):
            log(f"{runs / run.name} holds other weights than the packed run (retrained elsewhere, or unfinished); "
                "kept as it is, nothing of the pack copied into it")
            continue
        todo = [f for f in files if not (runs / run.name / f.name).exists()]
        for f in todo:
            _copy(f, runs / run.name / f.name)
        copied += len(todo)
    log(f"unpacked {copied} files from {folder} into {runs}")
    return copied


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints are both finished and hold the same weights (a damaged local one is not)."""
    try:
        x, y = load_verified(a), load_verified(b)
    except CorruptFile:
        return False
    return bool(x.get("finished") and y.get("finished")) and state_digest(x["model"]) == state_digest(y["model"])


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
        pack(setup(args.profile, args.overrides, root=args.root, progress=False), args.notebooks or list(NOTEBOOKS),
             args.folder)
    except (ValueError, FileNotFoundError) as e:  # CorruptFile is a ValueError
        ap.exit(1, f"{ap.prog}: {e}\n")


if __name__ == "__main__":
    main()
