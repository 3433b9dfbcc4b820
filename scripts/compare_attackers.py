"""DT's training-time attackers (the profile's ``grid_attacker``) scored on validation at the cell
the committed headline chose, as ``selection.compare_attackers`` scores them, without the rest of
the grid: whether a cheaper attacker trains an equally robust model, answered ahead of a full
rerun of 01_headline.

    python scripts/compare_attackers.py [profile] [overrides as JSON, e.g. '{"ablation_seeds": 2}'] [tag]

The cell (lambda_div, lambda_adv) is ``best_div`` of ``results/01_headline-<profile>.json``.
Trains and evaluates what the run cache lacks; the runs are the ones 01_headline's selection asks
for, so a later batch reads them from the cache. Writes ``results/attackers-<profile>[-<tag>].{json,md}``:
per attacker its validation rates, ``no_worse`` against the first (the study's), its training
throughput per seed (as each run logged it: a run that shared the cores reads lower), the runs and
provenance.
"""
import json
import sys
import time
from pathlib import Path

import torch

from dtlib.io import write_record
from dtlib.runtime import provenance
from dtlib.study import setup
from dtlib.study.selection import compare_attackers

ROOT = Path(__file__).resolve().parent.parent


def main(profile: str, overrides: dict | None = None, tag: str = "") -> dict:
    t0 = time.perf_counter()
    study = setup(profile, overrides, progress=False)
    cell = json.loads((ROOT / "results" / f"01_headline-{profile}.json").read_text())["selection"]["best_div"]
    results = []
    rows = compare_attackers(study, cell, dict(eval_split="val", eval_modes="ensemble"), results,
                             log=lambda s: print(s, flush=True))
    per_run = len(results) // len(rows)  # compare_attackers runs each attacker on the same seeds, in order
    for i, row in enumerate(rows):
        runs = results[i * per_run:(i + 1) * per_run]
        row["train_img_s"] = [r.metrics["train"]["images_per_s"] for r in runs]  # per seed, as each run logged it
        row["runs"] = [r.run_dir.name for r in runs]
        row["trained"] = [r.metrics["train"].get("provenance", {}).get("git_commit") for r in runs]
    record = {"profile": profile, "overrides": overrides or {}, "cell": cell, "seeds": list(study.seeds[:rows[0]["seeds"]]),
              "eval": study.config.group("eval"), "precision": results[0].metrics["train"]["precision"], "rows": rows,
              "wall_s": time.perf_counter() - t0, "provenance": provenance(torch.device("cpu"))}
    name = f"attackers-{profile}" + (f"-{tag}" if tag else "")
    write_record(ROOT / "results" / f"{name}.json", record, markdown(record, name))
    return record


def markdown(record: dict, name: str) -> str:
    p, c = record["provenance"], record["cell"]
    pct = lambda v: f"{100 * v:.1f}"
    lines = [f"<!-- written by scripts/compare_attackers.py from {name}.json -->",
             "| attacker | val clean acc (%) | val fooling rate (%) | val acc under UAP (%) | no worse than the first | "
             "training images/s per seed |", "| --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        lines.append(f"| {r['attacker']} | {pct(r['val_clean_acc'])} | {pct(r['val_fooling_rate'])} | "
                     f"{pct(r['val_uap_acc'])} | {'yes' if r['no_worse'] else 'no'} | "
                     f"{' / '.join(f'{v:.0f}' for v in r['train_img_s'])} |")
    return "\n".join(lines) + (
        f"\n\nDT K=5 at lambda_div={c['lambda_div']}, lambda_adv={c['lambda_adv']} (the headline's chosen cell with the "
        f"diversity term), seeds {record['seeds']}, scored on the validation split by the attack suite (L-inf "
        f"{record['eval']['eval_eps'] * 255:.0f}/255, ensemble); trained in {record.get('precision', 'bf16')}. Run on "
        f"{p['device']}, torch {p['torch']}, commit "
        f"{p['git_commit'][:12]}, {record['wall_s'] / 60:.0f} min. Training images/s as each run logged it "
        f"(a run that shared the cores with other work reads lower; results/bench-cpu-*.json holds step ratios "
        f"measured in one process).\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu", json.loads(sys.argv[2]) if len(sys.argv) > 2 else None,
         sys.argv[3] if len(sys.argv) > 3 else "")
