"""What a profile's batch costs to compute from a clean run cache, read from the wall times its runs
and evaluations recorded (``train.wall_s`` of each run, ``eval_wall_s`` of each evaluation), over
the notebooks' plan (``fill.plan``: every distinct run and evaluation once, however many notebooks
ask for it).

    python scripts/compute_time.py [profile] [folder]   (folder: a run cache, default runcache/<profile>)

Run folders are named with the precision ``auto`` resolves to: for the fp32 ``cpu`` cache on a CPU
whose ``auto`` is bf16, run it with ``DTLIB_AUTO_PRECISION=fp32``.

Writes ``results/compute-<profile>.{json,md}``: per method and K, how many runs and evaluations the
plan holds and the folder has, their summed and mean wall times, and the CPUs they were measured
on. Training ran alone at full threads (``make fill``); evaluations in lanes of one thread each, so
two lanes on 2 cores finish in about half their summed time. Nothing is estimated for what the
folder lacks: those rows say how many are missing.
"""
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from dtlib.experiment import metrics_path, run_dir_for
from dtlib.io import write_record
from dtlib.runtime import provenance
from dtlib.study import setup
from dtlib.study.fill import NOTEBOOKS, plan

ROOT = Path(__file__).resolve().parent.parent


def arm(cfg) -> str:
    return f"{cfg.method} K={cfg.heads}" + ("" if cfg.backbone == "cnn" else f" ({cfg.backbone})")


def summarize(configs: list, runs: Path) -> dict:
    """Per arm: the distinct runs and evaluations of ``configs``, how many ``runs`` holds, and their
    summed wall times (s); each run's training counted once, however many evaluations it has."""
    evals = {(run_dir_for(c, runs), c.eval_hash()): c for c in configs}
    rows: dict[str, dict] = defaultdict(lambda: dict(runs=0, runs_found=0, train_s=0.0, evaluations=0,
                                                     evaluations_found=0, eval_s=0.0))
    machines: Counter[str] = Counter()
    planned: set[Path] = set()
    timed: set[Path] = set()
    for (where, _), cfg in evals.items():
        row, path = rows[arm(cfg)], metrics_path(where, cfg)
        row["evaluations"] += 1
        row["runs"] += where not in planned
        planned.add(where)
        record = json.loads(path.read_text()) if path.exists() else None
        if record:
            row["evaluations_found"] += 1
            row["eval_s"] += record["eval_wall_s"]
            machines[record["provenance"]["device"]] += 1
            if where not in timed:  # every metrics file of a run repeats its training record
                timed.add(where)
                row["runs_found"] += 1
                row["train_s"] += record["train"]["wall_s"]
    return {"rows": dict(sorted(rows.items())), "machines": dict(machines), "runs": len(planned),
            "evaluations": len(evals)}


def main(profile: str = "cpu", folder: str = "") -> dict:
    t0 = time.perf_counter()
    runs = Path(folder or ROOT / "runcache" / profile)
    found = summarize(plan(setup(profile, progress=False), list(NOTEBOOKS)), runs)
    rows, machines, seen, evals = found["rows"], Counter(found["machines"]), found["runs"], found["evaluations"]
    missing = sum(r["evaluations"] - r["evaluations_found"] for r in rows.values())
    runs_missing = sum(r["runs"] - r["runs_found"] for r in rows.values())
    out = {"profile": profile, "folder": str(runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs),
           "rows": rows,
           "train_h": sum(r["train_s"] for r in rows.values()) / 3600,
           "eval_lane_h": sum(r["eval_s"] for r in rows.values()) / 3600,
           "evaluations_missing": missing, "runs_missing": runs_missing,
           "eval_machines": dict(machines), "wall_s": time.perf_counter() - t0,
           "provenance": provenance(torch.device("cpu"))}
    table = ["| arm | runs (found) | training h (sum) | evaluations (found) | evaluation h (sum, one-thread lanes) "
             "| per evaluation (min) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in out["rows"].items():
        per = f"{r['eval_s'] / 60 / r['evaluations_found']:.1f}" if r["evaluations_found"] else ""
        table.append(f"| {name} | {r['runs']} ({r['runs_found']}) | {r['train_s'] / 3600:.2f} | "
                     f"{r['evaluations']} ({r['evaluations_found']}) | {r['eval_s'] / 3600:.2f} | {per} |")
    table.append(f"| all | {seen} ({seen - runs_missing}) | {out['train_h']:.2f} | {evals} "
                 f"({evals - missing}) | {out['eval_lane_h']:.2f} | |")
    where = ", ".join(f"{n} on {m}" for m, n in machines.most_common())
    caption = (f"The `{profile}` profile's plan (every notebook, each distinct run and evaluation once), wall times "
               f"as recorded in {out['folder']}: training alone at full threads, evaluations in one-thread lanes "
               f"(two lanes on 2 cores: about half the summed hours). Evaluations measured: {where or 'none'}.")
    name = f"compute-{profile}"
    md = (f"<!-- written by scripts/compute_time.py from {name}.json -->\n" + "\n".join(table) + "\n\n"
          + caption + "\n")
    write_record(ROOT / "results" / f"{name}.json", out, md)
    print(md)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:3])
