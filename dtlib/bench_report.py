"""The benchmark's tables (Markdown) from its record, ``results/bench-<device>.json``: written by
``python -m dtlib.bench`` and redrawn by ``python -m dtlib.figures`` without measuring anything."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import atomic_path
from .phases import PHASES, phase_split


def write_report(record: dict[str, Any], path: Path) -> Path:
    """``report(record)`` into ``path`` atomically (what ``make readme`` copies into the README)."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!-- written by `python -m dtlib.bench` (or `python -m dtlib.figures`) from "
                       f"{path.with_suffix('.json').name} -->\n" + report(record) + "\n")
    return path


def _roofline_cells(r: dict[str, Any] | None) -> str:
    if not r:
        return " | | |"
    nominal = f"{100 * r['of_nominal']:.0f}%" if r["of_nominal"] is not None else ""
    return f" {r['gflops']:.0f} | {100 * r['of_gemm']:.0f}% | {nominal} |"


def report(record: dict[str, Any]) -> str:
    """The benchmark's tables (Markdown): ratios to standard with their spread, images per
    second, memory per K, the targets, and where DT's step time goes."""
    gpu = not record["device"].startswith("cpu")  # cpu, or cpu-<kind> (measure.device_slug)
    roof = "ceilings" in record  # records written before the roofline have no such columns
    lines = ["| case | ratio to standard | per-round IQR | images/s | training memory (MB) |" + (" median ms |" if gpu else "")
             + (" GFLOP/s | of GEMM | of nominal |" if roof else ""),
             "| --- | --- | --- | --- | --- |" + (" --- |" if gpu else "") + (" --- | --- | --- |" if roof else "")]
    mem = "cuda_peak_mb" if gpu else "peak_mb"
    for name, c in record["train"].items():
        q = c["ratio_quartiles"]
        lines.append(f"| train: {name} | {c['ratio']:.2f}x | {q[0]:.2f}-{q[1]:.2f} | {c['images_per_s']:.0f} | "
                     f"{c['memory'][mem]:.1f} |" + (f" {1e3 * c['median_s']:.1f} |" if gpu else "")
                     + (_roofline_cells(c.get("roofline")) if roof else ""))
    for name, c in record["inference"].items():
        q = c["ratio_quartiles"]
        lines.append(f"| inference: {name} | {c['ratio']:.3f}x | {q[0]:.3f}-{q[1]:.3f} | {c['images_per_s']:.0f} | |"
                     + (f" {1e3 * c['median_s']:.2f} |" if gpu else "") + (" | | |" if roof else ""))
    if roof:
        ce = record["ceilings"]
        n = ce.get("gemm_n", 8192 if gpu else 1024)  # records written before gemm_n: roofline.gemm_side's sides
        nominal = (f"{ce['nominal_gflops']:.0f} GFLOP/s nominal ({ce['nominal_basis']})" if ce["nominal_gflops"]
                   else f"no nominal peak ({ce['nominal_basis']})")
        lines.append(f"\nRoofline ({ce['precision']}): a step's FLOPs (torch's FLOP counter: convolutions and matrix "
                     f"products, forward and backward) per second of its median time, against a {n} x {n} matrix "
                     f"product measured here ({ce['gemm_gflops']:.0f} GFLOP/s) and {nominal}.")
    lines += ["", "| target | bound | measured | met |", "| --- | --- | --- | --- |"]
    for key, t in record["targets"].items():
        lines.append(f"| {key} | <= {t['target']:g} | {t['measured']:.3f} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "| case | " + " | ".join(PHASES) + " | step (sum) |", "| --- |" + " --- |" * (len(PHASES) + 1)]
    for name, c in record["train"].items():
        if "phases_ms" in c:
            ph = phase_split(c["phases_ms"])
            lines.append(f"| {name} | " + " | ".join(f"{ph[p]:.1f}" for p in PHASES) + f" | {sum(ph.values()):.1f} |")
    s = record["settings"]["config"]
    lines.append(f"\nPhases in ms per step (device-synchronised at each boundary); {s['backbone']}, batch "
                 f"{s['batch_size']}, {record['precision']}, {record['provenance']['device']}, torch "
                 f"{record['provenance']['torch']}, commit {record['provenance']['git_commit'][:12]}.")
    ops = record["train"].get("dt_k5", {}).get("ops_ms")
    if ops:
        lines += ["", "Where a DT (K=5) step's time goes: operators with the most self time in each phase "
                  "(ms per step under torch.profiler, which adds overhead):", ""]
        for ph, top in ops.items():
            shown = [f"{k.removeprefix('aten::')} {v:.1f}" for k, v in top.items() if v >= 0.5]
            if shown:
                lines.append(f"- {ph}: " + ", ".join(shown))
    if record.get("evaluation"):
        lines += ["", "| evaluation (attack suite) | seconds | in training epochs | modes | SGD-UAP fits | SGD steps | "
                  "entries | fit / scored images |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, e in record["evaluation"].items():
            lines.append(f"| {name} | {e['seconds']:.1f} | {e['in_epochs']:.1f} | {', '.join(e['modes'])} | {e['sgd_fits']} | "
                         f"{e['sgd_steps']} | {e['entries']} | {e['n_fit']} / {e['n_test']} |")
        lines.append(f"\nOne evaluation per model, trained one epoch on {s['data']} ({s['train_size'] or 'all'} training "
                     f"images); the config's eval settings, fit and scored images as the data allow (last column).")
    if record.get("epoch"):
        e = record["epoch"]
        lines.append(f"\nStandard epoch: {e['seconds']:.2f} s ({e['images_per_s']:.0f} images/s, {e['images']} images, {e['data']}).")
    return "\n".join(lines)
