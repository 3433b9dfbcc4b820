"""Does the study's attack suite report at least what a plain, independent SGD-UAP finds?

    python scripts/independent_attack.py [profile] [jobs]      (default: cpu 1; jobs = processes of one thread)

For every run of ``results/01_headline-<profile>.json`` (every arm and seed, every inference mode
scored), the baseline that first exposed the project's weak attack (issue "The evaluation attack"),
written here from scratch so that a bug in ``dtlib.attacks`` or ``dtlib.suite`` cannot hide in it:
signed-gradient SGD-UAP (Shafahi et al. 2020) with a fixed budget of 5 passes of 128-image batches
over 5,000 training images outside the validation split that the suite did not fit on (its pool,
``data.fitting_pool``, holds many more; where it does not, the rest are drawn from the suite's and
the overlap is recorded),
constant step eps/10 or eps/4, on the cross-entropy of the scored mode's output clamped at 12,
with the model's own clean predictions and with the true labels as labels; each of the four UAPs
is scored on the suite's test images, and the highest fooling rate and lowest accuracy are kept.
Writes ``results/independent-attack-<profile>.json``: per run and mode, the suite's numbers beside
the baseline's. Needs the run cache (``runs/``) of the batch that wrote the headline results.
"""
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dtlib.data import fitting_pool, load_data
from dtlib.evaluate import fit_indices, scored_subset
from dtlib.experiment import load_model
from dtlib.io import write_record
from dtlib.runtime import amp_dtype, provenance

ROOT = Path(__file__).resolve().parent.parent
SEED = 12345  # not a seed of the study


def labels_of(fn, x, dtype, delta=None):
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for b in range(0, len(x), 250):
            xb = x[b:b + 250].float() / 255
            out.append(fn(xb if delta is None else (xb + delta).clamp(0, 1)).argmax(-1))
    return torch.cat(out)


def plain_sgd_uap(fn, x, y, eps, step, dtype, passes=5, batch=128):
    g = torch.Generator().manual_seed(SEED)
    delta = torch.zeros(1, *x.shape[1:])
    for _ in range(passes):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            delta.requires_grad_(True)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = fn((x[idx].float() / 255 + delta).clamp(0, 1))
            loss = F.cross_entropy(out.float(), y[idx], reduction="none").clamp(max=12).mean()
            grad, = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return delta.detach()


def attack_row(row: dict) -> dict:
    """The baseline against one (run, inference mode) of the headline, beside the suite's numbers."""
    model, cfg = load_model(ROOT / "runs" / row["run"])
    dtype = amp_dtype(cfg.precision, torch.device("cpu"))
    _, _, test = load_data(cfg)
    train = fitting_pool(cfg)
    suite_fit = fit_indices(len(train), cfg.uap_fit_size, cfg.seed)
    rest = np.setdiff1d(np.arange(len(train)), suite_fit)
    rng = np.random.default_rng(SEED)
    pick = np.concatenate([rng.permutation(rest), rng.permutation(suite_fit)])[:5000]
    overlap = int(np.isin(pick, suite_fit).sum())
    pick = torch.from_numpy(pick)
    fit_x, fit_y = train.x[pick], train.y[pick]
    test = scored_subset(test, cfg.eval_size)
    mode = "ensemble" if row["eval"] == "ensemble" else "single"
    fn = lambda x: model.scores(x, mode, cfg.eval_head)
    clean_fit, clean_test = labels_of(fn, fit_x, dtype), labels_of(fn, test.x, dtype)
    found = {}
    for kind, labels in (("predicted", clean_fit), ("true", fit_y)):
        for frac in (0.1, 0.25):
            uap = plain_sgd_uap(fn, fit_x, labels, cfg.eval_eps, frac * cfg.eval_eps, dtype)
            adv = labels_of(fn, test.x, dtype, uap)
            found[f"{kind}/eps*{frac:g}"] = {"fooling_rate": (adv != clean_test).float().mean().item(),
                                             "uap_acc": (adv == test.y).float().mean().item()}
    best_fool = max(f["fooling_rate"] for f in found.values())
    best_acc = min(f["uap_acc"] for f in found.values())
    print(f"{row['arm']:>10} seed {row['seed']} {row['eval']:>8}: suite {row['fooling_rate']:.3f} / "
          f"{row['uap_acc']:.3f}, independent {best_fool:.3f} / {best_acc:.3f}", flush=True)
    return {"arm": row["arm"], "seed": row["seed"], "eval": row["eval"], "run": row["run"],
            "suite_fooling_rate": row["fooling_rate"], "independent_fooling_rate": best_fool,
            "suite_uap_acc": row["uap_acc"], "independent_uap_acc": best_acc,
            "suite_at_least_as_strong": row["fooling_rate"] >= best_fool and row["uap_acc"] <= best_acc,
            "independent": found, "n_fit": len(pick), "n_fit_overlap_with_suite": overlap}


def main(profile: str = "cpu", jobs: int = 1) -> dict:
    headline = json.loads((ROOT / "results" / f"01_headline-{profile}.json").read_text())
    t0 = time.perf_counter()
    # an arm that is another arm's model (DT chosen = one of the grid's cells) is attacked once
    unique = list({(r["run"], r["eval"]): r for r in headline["rows"]}.values())
    if jobs > 1:  # processes of one thread each (spawned: a forked OpenMP runtime can hang)
        with get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            done = pool.map(attack_row, unique, chunksize=1)
    else:
        done = [attack_row(row) for row in unique]
    found = {(r["run"], r["eval"]): r for r in done}
    out = [{**found[(r["run"], r["eval"])], "arm": r["arm"], "seed": r["seed"]} for r in headline["rows"]]
    record = {"profile": profile, "headline_commit": headline["provenance"]["git_commit"],
              "baseline": "plain SGD-UAP, 5 passes x 128-image batches over 5,000 training images (those the suite "
                          "did not fit on first), constant step eps/10 or eps/4, clamped CE on clean-prediction or true labels",
              "rows": out, "jobs": jobs, "wall_s": time.perf_counter() - t0, "provenance": provenance(torch.device("cpu"))}
    write_record(ROOT / "results" / f"independent-attack-{profile}.json", record, table(record))
    return record


def table(record: dict) -> str:
    """The record as a Markdown table (README: `make readme` copies it)."""
    pct = lambda v: f"{100 * v:.1f}"
    lines = [f"<!-- written by scripts/independent_attack.py from independent-attack-{record['profile']}.json -->",
             "| arm | seed | eval | fooling: suite | fooling: independent | acc under UAP: suite | "
             "acc under UAP: independent | suite at least as strong |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['eval']} | {pct(r['suite_fooling_rate'])} | "
                     f"{pct(r['independent_fooling_rate'])} | {pct(r['suite_uap_acc'])} | {pct(r['independent_uap_acc'])} | "
                     f"{'yes' if r['suite_at_least_as_strong'] else 'no'} |")
    prov = record["provenance"]
    return "\n".join(lines) + (f"\n\nRun on {prov['device']}, torch {prov['torch']}, commit {prov['git_commit'][:12]}, "
                               f"against the headline of commit {record['headline_commit'][:12]}.\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu", int(sys.argv[2]) if len(sys.argv) > 2 else 1)
