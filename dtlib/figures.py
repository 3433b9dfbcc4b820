"""Every figure of the study, drawn from a results dict (``results/<notebook>-<profile>.json``), so
figures are regenerated without training:

    python -m dtlib.figures [RESULTS_DIR] [FIGURES_DIR]     (also: make figures)

writes ``figures/<notebook>-<profile>.{png,pdf}`` for every results file, and the combined claims
table ``results/claims-<profile>.md`` (the README copies it), and where two profiles of
``tables.COMPARED`` both have results, each claim's verdict in one beside the other
(``results/claims-study-vs-cpu.md``). The seed summary's figures are drawn as black crosses /
dashed lines, labelled "seed".
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .bench_report import write_report  # noqa: E402
from .io import atomic_path  # noqa: E402
from .study.claims import SEED  # noqa: E402
from .tables import ARM_LABELS, COMPARED, TABLES, claims_table, deployed, verdict_changes  # noqa: E402

SEED_STYLE = dict(marker="X", color="black", s=90, zorder=5, label="seed (ImageNet)")


def _save(fig: plt.Figure, out: Path) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        path = out.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None}
                        if ext == "pdf" else {"Software": None})
        written.append(str(path))
    plt.close(fig)
    return written


def _err(row: dict[str, Any], m: str) -> float:
    s = row.get(f"{m}_std")
    return 0.0 if s is None or not math.isfinite(s) else s


def headline(res: dict[str, Any], out: Path) -> list[str]:
    table = res["table"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [f"{ARM_LABELS.get(r['arm'], r['arm'])} [{r['eval']}]" for r in table]
    for ax, (m, title) in zip(axes, (("clean_acc", "clean accuracy"), ("fooling_rate", "UAP fooling rate"),
                                     ("uap_acc", "accuracy under UAP"))):
        ys = [100 * r[m] for r in table]
        es = [100 * _err(r, m) for r in table]
        ax.bar(range(len(table)), ys, yerr=es, color=sns.color_palette("deep", len(table)), capsize=3)
        ax.set_xticks(range(len(table)), labels, rotation=50, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_ylabel(f"{title} (%)")
        ax.set_ylim(0, 100)
        if m == "fooling_rate":
            floor = [100 * r["random_fooling_rate"] for r in table]
            ax.scatter(range(len(table)), floor, marker="_", s=300, color="grey", label="random-sign floor", zorder=4)
    seed_pts = {("standard", "fooling_rate"): SEED["C1"]["standard"], ("dt_best", "fooling_rate"): SEED["C1"]["dt"],
                ("pgd_at", "fooling_rate"): SEED["C3"]["fooling"], ("standard", "clean_acc"): SEED["C2"]["standard"],
                ("dt_best", "clean_acc"): SEED["C2"]["dt"]}
    for ax, m in zip(axes, ("clean_acc", "fooling_rate")):
        # the seed's DT figures sit beside the ensemble row only, as in the headline table
        xs = [(i, seed_pts[(r["arm"], m)]) for i, r in enumerate(table)
              if (r["arm"], m) in seed_pts and (r["arm"] != "dt_best" or r["eval"] == "ensemble")]
        ax.scatter([x for x, _ in xs], [100 * y for _, y in xs], **SEED_STYLE)
        # above the axes: the bars reach 90% and the seed's markers sit in both upper corners
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    eps = res["study"]["config"]["eval_eps"] * 255
    fig.suptitle(f"Headline ({res['profile']} profile): white-box L-inf {eps:.0f}/255 SGD-UAP, "
                 f"mean ± std over {len(res['study']['seeds'])} seed(s)", y=1.04)
    return _save(fig, out)


def k_ablation(res: dict[str, Any], out: Path) -> list[str]:
    table = res["table"]
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    for ev, color in (("ensemble", "C0"), ("single", "C1")):
        rs = sorted([r for r in table if r["eval"] == ev or (r["heads"] == 1 and ev == "ensemble")],
                    key=lambda r: r["heads"])
        for ax, m, title in ((axes[0], "fooling_rate", "UAP fooling rate (%)"), (axes[1], "clean_acc", "clean accuracy (%)")):
            ax.errorbar([r["heads"] for r in rs], [100 * r[m] for r in rs], yerr=[100 * _err(r, m) for r in rs],
                        marker="o", color=color, label=f"DT, {ev}", capsize=3)
            ax.set_ylabel(title)
    axes[0].scatter(list(SEED["C6"]), [100 * v for v in SEED["C6"].values()], **SEED_STYLE)
    ens = sorted({r["heads"]: r for r in table}.values(), key=lambda r: r["heads"])
    axes[2].plot([r["heads"] for r in ens], [r["step_ratio"] for r in ens], marker="o")
    axes[2].axhline(SEED["C4"]["cost"], ls="--", color="black", label="seed: 2.3x at K=5")
    axes[2].set_ylabel("training step time / standard")
    axes[3].plot([r["heads"] for r in ens], [r["train_memory_mb"] for r in ens], marker="o")
    axes[3].set_ylabel("training memory per step (MB)" if res["provenance"]["device"].startswith("cpu")
                       else "peak CUDA memory per step (MB)")
    for ax in axes[:4]:
        ax.set_xlabel("K (heads)")
        ax.set_xticks(sorted({*[r["heads"] for r in ens], *SEED["C6"]}))
    for ax in axes[:3]:
        ax.legend(fontsize=8)
    sel = res["selection"]
    grid = sel["grid"]
    divs, advs = sorted({g["lambda_div"] for g in grid}), sorted({g["lambda_adv"] for g in grid})
    cell = {(g["lambda_div"], g["lambda_adv"]): [] for g in grid}
    for g in grid:
        cell[(g["lambda_div"], g["lambda_adv"])].append(100 * g["val_uap_acc"])
    data = [[sum(cell[(d, a)]) / len(cell[(d, a)]) for a in advs] for d in divs]
    sns.heatmap(data, annot=True, fmt=".1f", cmap="viridis", ax=axes[4], xticklabels=[f"{a:g}" for a in advs],
                yticklabels=[f"{d:g}" for d in divs], cbar_kws={"label": "val accuracy under UAP (%)"})
    refs = sel["references"]
    axes[4].set_title(f"K=5 grid (validation); standard {100 * refs['standard']['val_uap_acc']:.1f}%, "
                      f"UAT {100 * refs['uat']['val_uap_acc']:.1f}%", fontsize=9)
    axes[4].set_xlabel("λ_adv")
    axes[4].set_ylabel("λ_div")
    at = sel.get("best_div", sel["best"])
    fig.suptitle(f"K ablation ({res['profile']} profile), DT at λ_div={at['lambda_div']:g}, "
                 f"λ_adv={at['lambda_adv']:g} (best validated cell with λ_div > 0)")
    return _save(fig, out)


def cross_norm(res: dict[str, Any], out: Path) -> list[str]:
    table = res["table"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, norm, unit in ((axes[0], "linf", "L-inf radius (x 1/255)"), (axes[1], "l2", "L2 radius (pixel units)")):
        for i, arm in enumerate(dict.fromkeys(r["arm"] for r in table)):
            rs = sorted([r for r in table if r["arm"] == arm and r["norm"] == norm], key=lambda r: r["radius"])
            xs = [r["radius"] * (255 if norm == "linf" else 1) for r in rs]
            ax.errorbar(xs, [100 * r["uap_acc"] for r in rs], yerr=[100 * _err(r, "uap_acc") for r in rs],
                        marker="o", capsize=3, label=ARM_LABELS.get(arm, arm), color=f"C{i}")
        ax.set_xlabel(unit)
        ax.set_ylabel("accuracy under UAP (%)")
        ax.set_ylim(0, 100)
    # the seed gives no radius for its L2 figures: drawn as levels across the whole range
    axes[1].axhline(100 * SEED["C7"]["dt"], ls="--", color="black", lw=1, label="seed: DT (radius not given)")
    axes[1].axhline(100 * SEED["C7"]["defenses"], ls=":", color="black", lw=1, label="seed: standard defenses")
    axes[0].legend(fontsize=8)
    # outside the axes: inside, it hid part of the seed's DT level and of the lines under it
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"Cross-norm ({res['profile']} profile): models trained against L-inf 10/255, white-box UAPs")
    return _save(fig, out)


def transfer(res: dict[str, Any], out: Path) -> list[str]:
    names = list(res["models"])
    fr = {(r["source"], r["target"]): 100 * r["fooling_rate"] for r in res["rows"]}
    data = [[fr[(s, t)] for t in names] for s in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 0.9 * len(names) + 2))
    sns.heatmap(data, annot=True, fmt=".0f", cmap="rocket_r", vmin=0, vmax=100, ax=ax,
                xticklabels=names, yticklabels=names, cbar_kws={"label": "fooling rate on target (%)"})
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (UAP fitted on it)")
    ax.set_title(f"UAP transfer ({res['profile']} profile); diagonal = white-box; seed: DT target -64%", fontsize=9)
    return _save(fig, out)


def cost(res: dict[str, Any], out: Path) -> list[str]:
    table = res["table"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    seed_ref = {"dt_k5": SEED["C4"]["cost"], "pgd_at": SEED["C3"]["cost"], "single_head_k5": 1.0}
    for ax, kind in zip(axes, ("train step", "inference")):
        rs = [r for r in table if r["kind"] == kind]
        ax.bar([r["case"] for r in rs], [r["ratio"] for r in rs], color=sns.color_palette("deep", len(rs)))
        pts = [(i, seed_ref[r["case"]]) for i, r in enumerate(rs) if r["case"] in seed_ref]
        if pts:
            ax.scatter([i for i, _ in pts], [v for _, v in pts], **SEED_STYLE)
            ax.legend(fontsize=8)
        ax.set_ylabel(f"{kind} time / {'standard step' if kind == 'train step' else 'plain model'}")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Cost ({res['profile']} profile, {res['provenance']['device']})")
    return _save(fig, out)


def published(res: dict[str, Any], out: Path) -> list[str]:
    """06: per arm, the attack success rate of targeted UAPs (left) and the fooling rate of untargeted
    ones (right) at each radius, white-box (filled) and the standard model's UAP (hatched); each arm
    in the inference mode it is deployed in (the ensemble where it has heads, as C1 reads DT)."""
    rows = deployed(res["table"])
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    radii = sorted({r["eps"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, targeted, metric in ((axes[0], True, "asr"), (axes[1], False, "fooling_rate")):
        width = 0.8 / (2 * len(radii))
        for i, eps in enumerate(radii):
            for j, attack in enumerate(("white-box", "standard's UAP")):
                pick = {r["arm"]: r for r in rows if r["eps"] == eps and r["attack"] == attack and (r["target"] >= 0) == targeted}
                xs = [k + (2 * i + j) * width - 0.4 + width / 2 for k in range(len(arms))]
                ax.bar(xs, [100 * pick[a][metric] if a in pick else math.nan for a in arms], width,  # none: no bar
                       yerr=[100 * _err(pick[a], metric) if a in pick else 0 for a in arms],
                       hatch="//" if j else None, alpha=0.9, label=f"{eps * 255:.0f}/255, {attack}")
        ax.set_xticks(range(len(arms)), [ARM_LABELS.get(a, a) for a in arms], rotation=25, ha="right")
        ax.set_title("targeted UAPs: attack success rate (%)" if targeted else "untargeted UAPs: fooling rate (%)")
    axes[0].legend(fontsize=7)
    return _save(fig, out)


PLOTS: dict[str, Callable[[dict[str, Any], Path], list[str]]] = {
    "01_headline": headline, "02_k_ablation": k_ablation, "03_cross_norm": cross_norm,
    "04_transfer": transfer, "05_cost": cost, "06_published_method": published}


def _write_table(path: Path, source: str, table: str) -> str:
    """A Markdown table at ``path`` (atomically), headed by where it came from; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!-- written by `python -m dtlib.figures` from {source} -->\n" + table)
    return str(path)


def regenerate(results_dir: str | Path = "results", figures_dir: str | Path = "figures") -> list[str]:
    """Redraw every figure from the results files and rewrite the tables: each profile's claims table,
    the notebooks' own (``tables.TABLES``) and, for the profiles of ``tables.COMPARED`` that both have
    results, their verdicts side by side (``claims-<new>-vs-<old>.md``)."""
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    written, by_profile = [], {}
    for nb in PLOTS:  # in notebook order
        for path in sorted(results_dir.glob(f"{nb}-*.json")):
            res = json.loads(path.read_text())
            written += PLOTS[nb](res, figures_dir / path.stem)
            if nb in TABLES:
                written.append(_write_table(results_dir / f"{path.stem}.md", path.name, TABLES[nb](res)))
            by_profile.setdefault(res["profile"], []).append(res)
    for profile, results in by_profile.items():
        written.append(_write_table(results_dir / f"claims-{profile}.md", f"results/*-{profile}.json",
                                    claims_table(results)))
    for new, old in COMPARED:
        if new in by_profile and old in by_profile:
            written.append(_write_table(results_dir / f"claims-{new}-vs-{old}.md",
                                        f"results/*-{new}.json and results/*-{old}.json",
                                        verdict_changes(by_profile[new], by_profile[old])))
    for path in sorted(results_dir.glob("bench-*.json")):
        written.append(str(write_report(json.loads(path.read_text()), path.with_suffix(".md"))))
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    for p in regenerate(*args[:2]):
        print(p)
