"""The study's models as weights-only files anyone can attack without retraining (``weights``): every
arm and seed of the given results files (01_headline's, 06_published_method's), one safetensors file
per trained run under ``models/<profile>/``, and ``index.json`` listing each arm and seed with its
file, the file's sha256, its clean accuracy as the results file reported it, and its config.

``python -m dtlib export results/01_headline-study.json results/06_published_method-study.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import CHECKPOINT
from ..experiment import load_model
from ..io import project_dir, write_json
from ..weights import save_weights


def export_models(results: list[str | Path], out: str | Path | None = None, runs_dir: str | Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export every (arm, seed) of ``results`` (results JSON files of one profile) from ``runs_dir``
    (default: the project's runs/) to ``out`` (default models/<profile>/); returns the index written
    to ``out/index.json``. A run shared by two arms (the chosen DT cell) is written once."""
    loaded = [(Path(p), json.loads(Path(p).read_text())) for p in results]
    profiles = sorted({r["profile"] for _, r in loaded})
    if len(profiles) != 1:
        raise ValueError(f"The results files are of profiles {', '.join(profiles)}; export one profile at a time.")
    out = Path(out) if out else project_dir() / "models" / profiles[0]
    runs = Path(runs_dir) if runs_dir else project_dir() / "runs"
    arms: dict[tuple[str, int], dict[str, Any]] = {}
    for path, res in loaded:
        for row in res["rows"]:
            if "arm" not in row or "run" not in row:
                raise ValueError(f"{path} has rows without arm and run; export the headline or the published method's results.")
            entry = arms.setdefault((row["arm"], row["seed"]), {"arm": row["arm"], "seed": row["seed"], "run": row["run"],
                                                                "results": path.name, "clean_acc": {}})
            entry["clean_acc"][row["eval"]] = row["clean_acc"]
    missing = sorted({e["run"] for e in arms.values() if not (runs / e["run"] / CHECKPOINT).is_file()})
    if missing:  # found before anything is written
        raise ValueError(f"{runs / missing[0]} holds no checkpoint ({len(missing)} of the runs are missing); "
                         "export from the run cache that made the results (runs_dir=).")
    files: dict[str, dict[str, Any]] = {}
    for entry in arms.values():
        run = entry["run"]
        if run not in files:
            model, cfg = load_model(runs / run)
            name = f"{re.sub(r'[^A-Za-z0-9]+', '_', entry['arm'])}-seed{entry['seed']}.safetensors"
            sha = save_weights(model, cfg, out / name, {"run": run})
            files[run] = {"file": name, "sha256": sha, "bytes": (out / name).stat().st_size, "config": cfg.to_dict()}
            log(f"exported {entry['arm']} seed {entry['seed']} (run {run}) -> {out / name}")
        entry.update(files[run])
    index = {"profile": profiles[0], "results": [p.name for p, _ in loaded],
             "git_commit": loaded[0][1].get("provenance", {}).get("git_commit"),
             "total_bytes": sum(f["bytes"] for f in files.values()), "models": list(arms.values())}
    write_json(out / "index.json", index)
    return index
