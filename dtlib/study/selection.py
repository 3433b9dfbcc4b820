"""The validation-split selection of DT's settings that every experiment shares (``select_dt``: the
loss weights' grid, and DT's training-time attackers scored beside the one it trains with) and the
arms and controls it defines (``arms``)."""
from __future__ import annotations

import statistics
from typing import Any, Callable

from ..experiment import RunResult
from .rules import mean_spread, noise
from .settings import Study, attacker

SUMMARY_STEP = "ensemble_ce"  # the summary's training-time UAP: the ensemble CE, every batch, the whole batch


def _runs(results: list[RunResult]) -> dict[str, Any]:
    return {r.run_dir.name: {"config": r.config.to_dict(), "train": r.metrics["train"],
                             "eval_provenance": r.metrics["provenance"], "eval_wall_s": r.metrics.get("eval_wall_s")}
            for r in results}


def select_dt(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The K = 5 sensitivity grid over lambda_div x lambda_adv, scored on the validation split (held
    out of the training images) under a white-box UAP fitted against the ensemble. The chosen
    setting maximises validation accuracy under that UAP (fooling rate alone would favour a
    constant classifier); the standard model and UAT are scored the same way for reference.

    The grid trains with the first of ``study.grid_attacker``; the others (training-time attackers)
    are scored beside it at the chosen cell with the diversity term (``attackers``), and every other
    DT run trains with the step ``chosen_step`` picks from them (``step``, read on ``step_seeds``)."""
    val = dict(eval_split="val", eval_modes="ensemble")
    mine = attacker(study.grid_attacker[0])
    rows, results = [], []
    for seed in study.seeds[:study.ablation_seeds]:
        for div in study.grid_div:
            for adv in study.grid_adv:
                res = study.run(log, method="dt", heads=5, lambda_div=div, lambda_adv=adv, seed=seed, **mine, **val)
                results.append(res)
                rows.append({"lambda_div": div, "lambda_adv": adv, "seed": seed, **_val_row(res, "ensemble")})
    refs = {}
    for arm in ("standard", "uat"):
        vals = []
        for seed in study.seeds[:study.ablation_seeds]:
            res = study.run(log, method=arm, heads=1, seed=seed, **val)
            results.append(res)
            vals.append(_val_row(res, "head0"))
        refs[arm] = {k: statistics.fmean(v[k] for v in vals) for k in vals[0]}
    cells: dict[tuple[float, float], list[float]] = {}
    for r in rows:
        cells.setdefault((r["lambda_div"], r["lambda_adv"]), []).append(r["val_uap_acc"])
    score = lambda kv: statistics.fmean(kv[1])
    (div, adv), _ = max(cells.items(), key=score)  # first of ties: grid order
    with_div = {k: v for k, v in cells.items() if k[0] > 0}
    (ddiv, dadv), _ = max(with_div.items(), key=score) if with_div else ((div, adv), None)
    cell = {"lambda_div": ddiv, "lambda_adv": dadv}
    compared = compare_attackers(study, cell, val, results, log)
    skip = study.ablation_seeds if study.attacker_seeds else 0  # the grid's seeds, where they are not all
    step = chosen_step(compared, skip)
    if step != study.grid_attacker[0]:
        log(f"DT trains with {step}: {study.grid_attacker[0]} is worse than it on validation by more than the noise")
    return {"grid": rows, "references": refs, "best": {"lambda_div": div, "lambda_adv": adv}, "best_div": cell,
            "attacker": attacker(step), "step": step, "step_seeds": list(study.seeds[skip:compared[0]["seeds"]]),
            "attackers": compared,
            "criterion": "validation accuracy under a white-box L-inf UAP fitted against the ensemble",
            "runs": _runs(results)}


def chosen_step(compared: list[dict[str, Any]], skip: int = 0) -> str:
    """The training-time attacker every DT arm trains with: the first compared setting, unless the
    summary's own step (``SUMMARY_STEP``, the UAP fitted to the ensemble CE on the whole batch) was
    scored beside it and beats it by more than the noise of the two (``rules.noise``) in validation
    accuracy under UAP over the seeds after the first ``skip`` (``val_uap_acc_by_seed``). A cheaper
    step stands in for the summary's only where the study's own validation split does not show it
    worse; the rule was written before any ``study`` number. ``skip`` leaves out the grid's seeds:
    there the first setting's run is the best of the grid's cells, which favours it."""
    first = compared[0]
    ref = next((r for r in compared if attacker(r["attacker"]) == attacker(SUMMARY_STEP)), first)
    a, b = (mean_spread(r["val_uap_acc_by_seed"][skip:]) for r in (first, ref))
    return ref["attacker"] if a["mean"] < b["mean"] - noise(a, b) else first["attacker"]


def compare_attackers(study: Study, cell: dict[str, float], val: dict[str, str], results: list[RunResult],
                      log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """DT K = 5 at ``cell`` trained with each of ``study.grid_attacker``, scored on validation as the
    grid is, on the first ``attacker_seeds`` seeds (0: the grid's, ``ablation_seeds``): per setting,
    its rates per seed, their means and ``no_worse``: its validation accuracy under UAP at least the
    first setting's less the noise of the two (``rules.noise``: twice their combined standard
    deviation over the seeds, at least MIN_NOISE). On the grid's seeds the first setting's runs are
    the grid's at the cell it picked, the best of its cells, so the comparison leans against the
    others there. ``chosen_step`` reads these rows."""
    out = []
    for name in study.grid_attacker:
        vals = []
        for seed in study.seeds[:study.attacker_seeds or study.ablation_seeds]:
            res = study.run(log, method="dt", heads=5, seed=seed, **cell, **attacker(name), **val)
            results.append(res)
            vals.append(_val_row(res, "ensemble"))
        out.append({"attacker": name, **attacker(name), "seeds": len(vals),
                    **{k: statistics.fmean(v[k] for v in vals) for k in vals[0]},
                    "val_uap_acc_sd": statistics.stdev(v["val_uap_acc"] for v in vals) if len(vals) > 1 else 0.0,
                    "val_uap_acc_by_seed": [v["val_uap_acc"] for v in vals]})
    first = out[0]
    spread = lambda r: {"std": r["val_uap_acc_sd"]}
    return [{**r, "no_worse": r["val_uap_acc"] >= first["val_uap_acc"] - noise(spread(first), spread(r))} for r in out]


def _val_row(res: RunResult, key: str) -> dict[str, float]:
    m = res.metrics["eval"][key]
    return {"val_clean_acc": m["clean_acc"], "val_fooling_rate": m["fooling_rate"], "val_uap_acc": m["uap_acc"]}


def arms(selection: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The headline's methods and the controls of docs/protocol.md section 3, as Config overrides.

    ``dt_best`` is the grid's best cell on validation; ``dt_div`` the best cell *with* the diversity
    term (lambda_div > 0), which the controls (K = 1, lambda_div = 0, at its lambda_adv) are read
    against: when the best cell has no diversity term, the two differ."""
    best, with_div = selection["best"], selection.get("best_div", selection["best"])
    div, adv = best["lambda_div"], best["lambda_adv"]
    cdiv, cadv = with_div["lambda_div"], with_div["lambda_adv"]
    dt = dict(method="dt", **selection.get("attacker", {}))  # selections from before grid_attacker: the defaults
    return {
        "standard": dict(method="standard", heads=1),
        "pgd_at": dict(method="pgd_at", heads=1),
        "uat": dict(method="uat", heads=1),
        # control: the same running UAP and CE term with one head, so no diversity is possible
        "dt_k1": dict(dt, heads=1, lambda_div=cdiv, lambda_adv=cadv),
        # control: five heads, no diversity term
        "dt_nodiv": dict(dt, heads=5, lambda_div=0.0, lambda_adv=cadv),
        "dt_literal": dict(dt, heads=5, lambda_div=1.0, lambda_adv=0.0),
        "dt_div": dict(dt, heads=5, lambda_div=cdiv, lambda_adv=cadv),
        "dt_best": dict(dt, heads=5, lambda_div=div, lambda_adv=adv),
    }
