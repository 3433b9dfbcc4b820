"""Does the study's attack suite report at least what a plain, independent SGD-UAP finds?

    python scripts/independent_attack.py [profile] [jobs] [--models]
    (default: cpu 1; jobs = processes of one thread)

For every model of ``results/01_headline-<profile>.json`` (every arm and seed, every inference mode
scored) and those of ``06_published_method-<profile>.json`` that the headline lacks (at the headline's
radius, untargeted, white-box), the baseline that first exposed the project's weak attack (issue
"The evaluation attack"), written here from scratch so that a bug in ``dtlib.attacks`` or
``dtlib.suite`` cannot hide in it: signed-gradient SGD-UAP (Shafahi et al. 2020) with a fixed budget
of 5 passes of 128-image batches over 5,000 training images outside the validation split that the
suite did not fit on (its pool, ``data.fitting_pool``, holds many more; where it does not, the rest
are drawn from the suite's and the overlap is recorded), constant step eps/10 or eps/4, on the
cross-entropy of the scored mode's output clamped at 12, with the model's own clean predictions and
with the true labels as labels; each of the four UAPs is scored on the suite's test images, and the
highest fooling rate and lowest accuracy are kept.

The models are the run cache's (``runs/`` of the batch that wrote the results), or with ``--models``
the exported files of ``models/<profile>/`` (``python -m dtlib export``), each file's sha256 checked
against ``index.json`` before it is attacked: the checkpoints a user downloads. The evaluation
settings (radius, scored images, head, seed) are the results file's, never the model file's, and
the precision is the one the suite scored the run in (its training precision).
Writes ``results/independent-attack-<profile>.json``: per model and mode, the suite's numbers beside
the baseline's, and whether the suite's fooling rate is at least the baseline's less 5 points.
A killed invocation resumes: each finished row is kept in ``runcache/<profile>/independent-attack.jsonl``
(``-models.jsonl`` with ``--models``; beside the fill's pack, so a commit carries it to another machine
as it carries the fill) until the record is written, and the same command attacks only the rows it
lacks; each row names the machine that attacked it.
"""
import argparse
import json
import math
import os
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dtlib.config import Config
from dtlib.data import file_digest, fitting_pool, load_data
from dtlib.evaluate import fit_indices, scored_subset
from dtlib.experiment import load_model
from dtlib.io import write_record
from dtlib.runtime import amp_dtype, provenance

ROOT = Path(__file__).resolve().parent.parent
SEED = 12345  # not a seed of the study
MARGIN = 0.05  # the suite may report up to 5 points less fooling than the baseline (issue 16)
EXPORT = "python -m dtlib export results/01_headline-<profile>.json results/06_published_method-<profile>.json"


def labels_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype | None,
              delta: torch.Tensor | None = None) -> torch.Tensor:
    """``fn``'s predicted class of each uint8 image of ``x`` (pixels 0-255), with ``delta`` (pixel units
    of [0, 1]) added and clamped to [0, 1] when given; under bf16 autocast when ``dtype`` is bf16."""
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for b in range(0, len(x), 250):
            xb = x[b:b + 250].float() / 255
            out.append(fn(xb if delta is None else (xb + delta).clamp(0, 1)).argmax(-1))
    return torch.cat(out)


def plain_sgd_uap(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
                  step: float, dtype: torch.dtype | None, passes: int = 5, batch: int = 128) -> torch.Tensor:
    """A UAP (1, C, H, W) in the L-inf ball of radius ``eps`` (pixel units of [0, 1]): ``passes`` passes
    of signed-gradient ascent with constant ``step`` on the cross-entropy (clamped at 12) of ``fn`` on
    the uint8 images ``x`` with labels ``y``, in shuffled batches of ``batch``."""
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


def within_margin(suite: float, independent: float, n: int) -> bool:
    """Is the suite's fooling rate at least the baseline's less MARGIN, both rates over the same ``n``
    scored images? Counted in images, so a gap of exactly 5 points is within (float32 rates are not)."""
    return round((independent - suite) * n) <= round(MARGIN * n)


def suite_rows(profile: str, results: Path = ROOT / "results") -> list[dict]:
    """The (model, mode) rows to check, each with the suite's numbers, the radius (eps, pixel units) and
    the evaluation's config: the headline's, then the published method's models the headline lacks."""
    head = json.loads((results / f"01_headline-{profile}.json").read_text())
    eps = head["study"]["eval_eps"]
    # the precision the suite scored each run in: the one it was trained in (the run cache keys on it)
    rows = [{**r, "eps": eps, "config": head["runs"][r["run"]]["config"], "results": "01_headline",
             "precision": head["runs"][r["run"]]["train"]["precision"]} for r in head["rows"]]
    published = results / f"06_published_method-{profile}.json"
    if published.exists():
        pub = json.loads(published.read_text())
        seen = {(r["run"], r["eval"]) for r in rows}
        for r in pub["rows"]:
            if (r["target"] < 0 and r["attack"] == "white-box" and math.isclose(r["eps"], eps)
                    and (r["run"], r["eval"]) not in seen):
                seen.add((r["run"], r["eval"]))
                rows.append({**r, "config": pub["runs"][r["run"]]["config"], "results": "06_published_method",
                             "precision": pub["runs"][r["run"]]["train"]["precision"]})
    return rows


def model_files(rows: list[dict], models: Path | None) -> dict[str, Path]:
    """run -> what to load: its folder in runs/, or its exported file in ``models`` (sha256 checked
    against the index); ValueError in one sentence for a run the index lacks or a file that differs."""
    if models is None:
        return {r["run"]: ROOT / "runs" / r["run"] for r in rows}
    if not (models / "index.json").is_file():
        raise ValueError(f"{models / 'index.json'}: no such file; export the models first ({EXPORT}).")
    index = json.loads((models / "index.json").read_text())
    by_run = {m["run"]: m for m in index.get("models", [])} if isinstance(index, dict) else {}
    out = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        if run not in by_run:
            raise ValueError(f"{models / 'index.json'} lists no file for run {run}; export the headline's and the "
                             f"published method's results together ({EXPORT}).")
        m = by_run[run]
        if not (models / m["file"]).is_file():
            raise ValueError(f"{models / m['file']}, listed in {models / 'index.json'}, is missing.")
        if file_digest(models / m["file"]) != m["sha256"]:
            raise ValueError(f"{models / m['file']} does not match the sha256 in its index.")
        out[run] = models / m["file"]
    return out


def attack_indexed(item: tuple[int, dict]) -> tuple[int, dict]:
    """attack_row for a pool that returns rows as they finish: the row's index beside its result."""
    return item[0], attack_row(item[1])


def attack_row(row: dict) -> dict:
    """The baseline against one (model, inference mode), beside the suite's numbers."""
    t0 = time.perf_counter()
    model, _ = load_model(row["model"])
    cfg = Config.from_dict(row["config"]).replace(eval_eps=row["eps"], precision=row["precision"])
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
            "suite_within_margin": within_margin(row["fooling_rate"], best_fool, len(test.y)),
            "clean_acc": (clean_test == test.y).float().mean().item(), "results": row["results"],
            "model": _shown(row["model"]),
            "independent": found, "n_fit": len(pick), "n_fit_overlap_with_suite": overlap,
            "wall_s": time.perf_counter() - t0, "device": provenance(torch.device("cpu"))["device"]}


def _shown(path: Path) -> str:
    """``path`` relative to the project where it lies in it (as a record and a resume key name it), else as given."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def resume_key(row: dict) -> str:
    """What a saved row must match to be reused: the model (its path in the project, so another checkout
    matches), the mode, the suite's numbers and settings."""
    return json.dumps([row["run"], row["eval"], _shown(Path(row["model"])), row["eps"], row["precision"],
                       row["fooling_rate"], row["uap_acc"], SEED], sort_keys=True)


def saved_rows(path: Path) -> dict[str, dict]:
    """The rows a killed invocation finished, by resume_key; a line cut short by the kill is skipped."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                done[entry["key"]] = entry["row"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def main(profile: str = "cpu", jobs: int = 1, models: Path | None = None, results: Path = ROOT / "results",
         cache: Path | None = None) -> dict:
    """Attack every row, write ``results/independent-attack-<profile>.{json,md}``. Each finished row is
    appended to ``<cache>/independent-attack[-models].jsonl`` first (default ``runcache/<profile>``), so a
    killed invocation resumes with the rows it lacks; the file goes once the record is written."""
    cache = ROOT / "runcache" / profile if cache is None else cache
    rows = suite_rows(profile, results)
    files = model_files(rows, models)  # every file checked before the first attack
    t0 = time.perf_counter()
    # an arm that is another arm's model (DT chosen = one of the grid's cells) is attacked once
    unique = list({(r["run"], r["eval"]): {**r, "model": files[r["run"]]} for r in rows}.values())
    resume = cache / f"independent-attack{'-models' if models is not None else ''}.jsonl"
    saved = saved_rows(resume)
    todo = [r for r in unique if resume_key(r) not in saved]
    done = [saved[resume_key(r)] for r in unique if resume_key(r) in saved]
    if done:
        print(f"resuming: {len(done)} of {len(unique)} rows saved in {resume}", flush=True)
    resume.parent.mkdir(parents=True, exist_ok=True)
    with open(resume, "a") as log:
        def keep(row: dict, out: dict) -> None:
            log.write(json.dumps({"key": resume_key(row), "row": out}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            done.append(out)
        if jobs > 1 and todo:  # processes of one thread each (spawned: a forked OpenMP runtime can hang)
            with get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                for i, out in pool.imap_unordered(attack_indexed, list(enumerate(todo)), chunksize=1):
                    keep(todo[i], out)
        else:
            for row in todo:
                keep(row, attack_row(row))
    found = {(r["run"], r["eval"]): r for r in done}
    out = [{**found[(r["run"], r["eval"])], "arm": r["arm"], "seed": r["seed"]} for r in rows]
    commits = {nb: json.loads(path.read_text())["provenance"]["git_commit"] for nb in ("01_headline", "06_published_method")
               if (path := results / f"{nb}-{profile}.json").exists()}
    index = None if models is None else json.loads((models / "index.json").read_text())
    record = {"profile": profile, "headline_commit": commits["01_headline"], "results_commits": commits,
              "index": None if index is None else {k: index.get(k) for k in ("git_commit", "results")},
              "models": "runs/ (the run cache)" if models is None else f"{_shown(models)} (exported files, sha256 checked)",
              "baseline": "plain SGD-UAP, 5 passes x 128-image batches over 5,000 training images (those the suite "
                          "did not fit on first), constant step eps/10 or eps/4, clamped CE on clean-prediction or true labels",
              "margin": MARGIN, "rows": out, "jobs": jobs, "resumed_rows": len(unique) - len(todo),
              "wall_s": time.perf_counter() - t0,  # this invocation's; a resumed one also ran before
              "row_wall_s": sum(r.get("wall_s", 0.0) for r in found.values()),
              # a resumed record's rows may come from several machines (each row names its own)
              "row_devices": sorted({r["device"] for r in found.values() if "device" in r}),
              "provenance": provenance(torch.device("cpu"))}
    write_record(results / f"independent-attack-{profile}.json", record, table(record))
    resume.unlink()
    return record


def table(record: dict) -> str:
    """The record as a Markdown table (README: `make readme` copies it)."""
    pct = lambda v: f"{100 * v:.1f}"
    margin = record.get("margin")
    lines = [f"<!-- written by scripts/independent_attack.py from independent-attack-{record['profile']}.json -->",
             "| arm | seed | eval | fooling: suite | fooling: independent | acc under UAP: suite | "
             "acc under UAP: independent | suite at least as strong |"
             + (f" suite within {100 * margin:g} points |" if margin is not None else ""),
             "| --- " * (8 + (margin is not None)) + "|"]
    for r in record["rows"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['eval']} | {pct(r['suite_fooling_rate'])} | "
                     f"{pct(r['independent_fooling_rate'])} | {pct(r['suite_uap_acc'])} | {pct(r['independent_uap_acc'])} | "
                     f"{'yes' if r['suite_at_least_as_strong'] else 'no'} |"
                     + (f" {'yes' if r['suite_within_margin'] else 'no'} |" if margin is not None else ""))
    prov = record["provenance"]
    devices = record.get("row_devices") or [prov["device"]]
    where = f"Run on {devices[0]}" if len(devices) == 1 else f"Rows attacked on {'; '.join(devices)}"
    return "\n".join(lines) + (f"\n\nModels: {record.get('models', 'runs/ (the run cache)')}. "
                               f"{where}, torch {prov['torch']}, commit {prov['git_commit'][:12]}, "
                               f"against the headline of commit {record['headline_commit'][:12]}.\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The study's attack suite against a plain, independent SGD-UAP.")
    ap.add_argument("profile", nargs="?", default="cpu")
    ap.add_argument("jobs", nargs="?", type=int, default=1, help="processes of one thread each")
    ap.add_argument("--models", action="store_true", help="attack the exported files of models/<profile>/, not runs/")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"jobs {args.jobs} must be at least 1.")
    try:
        main(args.profile, args.jobs, ROOT / "models" / args.profile if args.models else None)
    except ValueError as e:  # a missing or altered model file: one sentence, no traceback
        ap.error(str(e))
