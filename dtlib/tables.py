"""The study's Markdown tables, written beside the figures from the same results dicts: the claims
table of a profile, the headline table, 06's table of the published method, and the attack check.
Numbers are percentages of the results' rates, with the spread over seeds where there is one."""
from __future__ import annotations

import math
from typing import Any

from .config import ATTACK_VERSION
from .study.claims import SEED
from .study.rules import MIN_NOISE, ORDER

ARM_LABELS = {"standard": "standard", "pgd_at": "PGD-AT", "uat": "UAT", "dt_k1": "DT K=1 (ctl)",
              "dt_nodiv": "DT λdiv=0 (ctl)", "dt_literal": "DT literal", "dt_div": "DT λdiv>0",
              "dt_best": "DT (chosen)", "entropy_dt": "entropy-DT", "entropy_dt_published": "entropy-DT (as published)",
              "finetune_ctl": "clean fine-tune (ctl)"}


def claims_table(results: list[dict[str, Any]]) -> str:
    """The claims rows of every notebook of one profile, as a Markdown table, with where and from
    which commit each notebook's results came; a notebook whose UAP numbers were made by an earlier
    evaluation attack than this code's (``attack_version``) is marked so in every row."""
    lines = ["| claim | what | seed (ImageNet) | measured (CIFAR-10) | setting | verdict | notebook |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        for c in res["claims"]:
            lines.append(f"| {c['claim']} | {c['what']} | {c['seed']} | {c['measured']} | {c['setting']} | "
                         f"**{c['verdict']}** | {res['notebook']}{STALE.get(attack_version(res), ('',))[0]} |")
    short = lambda c: c[:12] + ("+dirty" if c.endswith("+dirty") else "")
    made: dict[str, list[str]] = {}
    for r in results:
        trained = sorted({short(run["train"]["provenance"]["git_commit"]) for run in r.get("runs", {}).values()})
        where = (f"run on {r['provenance']['device']}, torch {r['provenance']['torch']}, commit "
                 f"{short(r['provenance']['git_commit'])}" + (f"; models trained at {', '.join(trained)}" if trained else ""))
        made.setdefault(where, []).append(r["notebook"])
    return ("\n".join(lines) + "\n\n" + " ".join(f"{', '.join(nbs)}: {where}." for where, nbs in made.items())
            + "".join(f" Rows marked \"{STALE[v][0].strip()}\": {STALE[v][1]}"
                      for v in sorted({attack_version(r) for r in results} & set(STALE))) + "\n")


# Profiles whose claims are read against another's: the study proper against the quick look, the
# GPU's ResNet-18 against the study proper (the same questions on a larger model).
COMPARED = (("study", "cpu"), ("gpu", "study"))


def verdict_changes(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> str:
    """Each claim's verdict in profile ``new``'s results beside profile ``old``'s (both lists of one
    profile's results dicts), in ``new``'s order, then claims only ``old`` has; "changed" compares
    the verdicts themselves (holds, partly, does not hold, inconclusive, not measured), not their
    reasons and notes."""
    name = lambda results: results[0]["profile"]
    verdicts = lambda results: {c["claim"]: (c["what"], c["verdict"]) for r in results for c in r["claims"]}
    a, b = verdicts(new), verdicts(old)
    head = lambda v: next((w for w in ("inconclusive", "not measured", *ORDER) if v.startswith(w)), v)
    lines = [f"| claim | what | verdict ({name(new)}) | verdict ({name(old)}) | changed |", "| --- " * 5 + "|"]
    for claim in dict.fromkeys([*a, *b]):
        what = (a.get(claim) or b[claim])[0]
        va, vb = a.get(claim, (None, None))[1], b.get(claim, (None, None))[1]
        changed = "n/a" if va is None or vb is None else ("**yes**" if head(va) != head(vb) else "no")
        lines.append(f"| {claim} | {what} | {va or '(not measured)'} | {vb or '(not measured)'} | {changed} |")
    return "\n".join(lines) + "\n"


# The marks of results made by an earlier evaluation attack (config.ATTACK_VERSION), and why.
PRE_SUITE = " (before the attack suite)"
EARLIER_SUITE = " (attack suite v1)"
STALE = {0: (PRE_SUITE, "results made with the earlier evaluation attack (one SGD-UAP fitted for a fixed number "
                        "of epochs), whose fooling rates are lower bounds; not yet regenerated."),
         1: (EARLIER_SUITE, "the attack suite before its version 2, whose SGD-UAP also stepped on each pass's "
                            "leftover partial batch (8 images of 5,000 in batches of 128), setting each fit back "
                            "once per pass; not yet regenerated.")}
assert max(STALE) < ATTACK_VERSION


def attack_version(res: dict[str, Any]) -> int:
    """The evaluation attack's version a results record's UAP numbers come from: as recorded (since
    version 2), else 1 if its config has the suite's stopping rule, else 0 (one fixed-epoch SGD-UAP).
    A record without evaluated runs (05_cost: timings) has no UAP numbers: the current version."""
    if not res.get("runs"):
        return ATTACK_VERSION
    return res.get("attack_version", 1 if "uap_patience" in res["study"]["config"] else 0)


def headline_table(res: dict[str, Any]) -> str:
    """The headline table (mean ± std over seeds) as Markdown."""
    pct = lambda r, m: f"{100 * r[m]:.1f}" + (f" ± {100 * r[m + '_std']:.1f}" if r.get(m + "_std") is not None else "")
    # the seed's figures beside ours (ImageNet, ResNet-50): clean, fooling, training cost
    seed = {"standard": (SEED["C2"]["standard"], SEED["C1"]["standard"], 1.0),
            "pgd_at": (None, SEED["C3"]["fooling"], SEED["C3"]["cost"]),
            "dt_best": (SEED["C2"]["dt"], SEED["C1"]["dt"], SEED["C4"]["cost"])}
    sp = lambda v, unit="%": "" if v is None else (f"{100 * v:.1f}" if unit == "%" else f"{v:g}x")
    # a seed whose run and standard run were trained on different machines has no cost ratio
    cost = lambda r: (f"{r['cost_ratio']:.2f}x" if math.isfinite(r["cost_ratio"]) else "n/a") + (
        f" (n={r['cost_ratio_n']})" if "cost_ratio_n" in r else "")
    lines = ["| method | eval | clean acc (%) | seed clean | UAP fooling (%) | seed fooling | acc under UAP (%) "
             "| random fooling (%) | train cost | seed cost | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["table"]:
        sc, sf, scost = seed.get(r["arm"], (None, None, None)) if r["eval"] == "ensemble" or r["arm"] in ("standard", "pgd_at") else (None,) * 3
        lines.append(f"| {ARM_LABELS.get(r['arm'], r['arm'])} | {r['eval']} | {pct(r, 'clean_acc')} | {sp(sc)} | "
                     f"{pct(r, 'fooling_rate')} | {sp(sf)} | {pct(r, 'uap_acc')} | {pct(r, 'random_fooling_rate')} | "
                     f"{cost(r)} | {sp(scost, 'x')} | {r['n']} |")
    sel = res["selection"]
    best, div = sel["best"], sel.get("best_div", sel["best"])
    return ("\n".join(lines) + f"\n\nChosen on the validation split: DT (chosen) λ_div = {best['lambda_div']:g}, "
            f"λ_adv = {best['lambda_adv']:g}; best cell with the diversity term (DT λdiv>0, and its controls' "
            f"λ_adv): λ_div = {div['lambda_div']:g}, λ_adv = {div['lambda_adv']:g}; DT literal: λ_div = 1, λ_adv = 0. "
            "Seed figures: ImageNet, ResNet-50 (C1-C4); single-head inference has no overhead (C5, `05_cost`).\n"
            + check_table(res.get("attack_check") or []))


def check_table(check: list[dict[str, Any]]) -> str:
    """The attack check (``attack_check`` rows: each model's suite against the stronger suite) as
    Markdown; empty for results made before the suite, whose check rows lack the accuracy columns."""
    if not check or "stronger_uap_acc" not in check[0]:
        return ""
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"
    # targeted rows (06) also show the targeted success rate, which the check requires not to rise
    targeted = any("stronger_targeted_success" in c for c in check)
    # rows since the check also takes later seeds' evaluations whose fits reached the cap carry their seed
    seeds = all("seed" in c for c in check)
    yes = lambda v: "" if v is None else "yes" if v else "**no**"
    stopped = lambda c: f" | {yes(c.get('fits_stopped'))} / {yes(c.get('stronger_fits_stopped'))}" if seeds else ""
    # rows whose stronger suite raised a figure climbed the ladder: they report a stronger suite's figures
    climbed = any(c.get("level") for c in check)
    ladder = lambda c: f"{c.get('level', 0)} ({', '.join(pct(f) for f in c.get('ladder', []))}) | " if climbed else ""
    extra = " to target (%) | stronger suite |" if targeted else ""
    lines = ["| method |" + (" seed |" if seeds else "") + " eval |" + (" level (fooling % per level) |" if climbed else "")
             + " UAP fooling (%) | stronger suite | acc under UAP (%) | stronger suite |" + extra + " fitting images |"
             + (" fits stopped by the rule |" if seeds else "") + " converged |",
             "| --- " * (8 + 2 * targeted + 2 * seeds + climbed) + "|"]
    for c in check:
        lines.append(f"| {ARM_LABELS.get(c['arm'], c['arm'])} | " + (f"{c['seed']} | " if seeds else "") + f"{c['eval']} | "
                     + ladder(c) + f"{pct(c['fooling_rate'])} | {pct(c['stronger_fooling_rate'])} | {pct(c['uap_acc'])} | "
                     f"{pct(c['stronger_uap_acc'])} | "
                     + (f"{pct(c.get('targeted_success'))} | {pct(c.get('stronger_targeted_success'))} | " if targeted else "")
                     + f"{c['n_fit']} / {c['stronger_n_fit']}{stopped(c)}"
                     + f" | {'yes' if c['converged'] else '**no**'} |")
    # the check's suite (level 1) is the stronger one of a row that did not climb
    base = [c for c in check if not c.get("level")]
    more = (base or check)[0]["stronger"]
    which = ("the first seed, and any evaluation whose fits reached the suite's cap before its stopping rule; "
             "fits stopped by the rule: every fit of the suite / of the stronger suite" if seeds else "first seed")
    climb = (" Where the larger suite raised a figure, the evaluation climbs a level: it reports the larger suite's "
             "figures (in its notebook's tables and claims too) and is checked by a suite larger again, the same "
             "rule applied to the larger suite's settings; the level column gives the level reported and the "
             "fooling rate at each level evaluated. A row converges only where no level beats its figures by "
             "more than the same 2 points." if climbed else "")
    return (f"\nAttack check ({which}): each model attacked again by a larger suite (" + ("" if base else "next level: ") +
            ", ".join(f"{k}={v:g}" for k, v in more.items()) + f"); converged = the fooling rate rises by at most "
            f"{100 * MIN_NOISE:g} points and the accuracy under UAP falls by at most as much"
            + (", and a targeted UAP's success rate rises by at most as much" if targeted else "") + "." + climb
            + "\n\n" + "\n".join(lines) + "\n")


def deployed(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of each arm in the inference mode it is deployed in: the ensemble where it has heads
    (as C1 reads DT), else head 0."""
    ensembles = {r["arm"] for r in table if r["eval"] == "ensemble"}
    return [r for r in table if r["eval"] == ("ensemble" if r["arm"] in ensembles else "head0")]


def published_table(res: dict[str, Any]) -> str:
    """06's table: per arm (in the inference mode it is deployed in, as its figure) and radius, clean
    accuracy and, for untargeted and targeted UAPs, white-box and the standard model's UAP moved to
    it: the published attack success rate, the fooling rate, and the targeted success rate."""
    pct = lambda r, m: "" if r is None or r.get(m) is None else (
        f"{100 * r[m]:.1f}" + (f" ± {100 * r[m + '_std']:.1f}" if r.get(m + "_std") is not None else ""))
    rows = deployed(res["table"])
    target = next((r["target"] for r in rows if r["target"] >= 0), None)
    at = {(r["arm"], r["eps"], r["target"] >= 0, r["attack"]): r for r in rows}
    lines = ["| method | eval | L-inf radius | clean acc (%) | untargeted ASR (%) | fooling (%) | ASR, standard's "
             f"UAP (%) | targeted ASR (%) | to class {target} (%) | ASR, standard's UAP (%) | to class {target}, "
             "standard's UAP (%) | seeds |", "| --- " * 12 + "|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for eps in sorted({r["eps"] for r in rows if r["arm"] == arm}):
            u, ut, t, tt = (at.get((arm, eps, tg, a)) for tg in (False, True) for a in ("white-box", "standard's UAP"))
            first = u or t
            lines.append(f"| {ARM_LABELS.get(arm, arm)} | {first['eval']} | {eps * 255:.0f}/255 | "
                         f"{pct(first, 'clean_acc')} | {pct(u, 'asr')} | {pct(u, 'fooling_rate')} | {pct(ut, 'asr')} | "
                         f"{pct(t, 'asr')} | {pct(t, 'targeted_success')} | {pct(tt, 'asr')} | "
                         f"{pct(tt, 'targeted_success')} | {first['n']} |")
    check = [{**c, "arm": f"{ARM_LABELS.get(c['arm'], c['arm'])}, " + ("untargeted" if c["target"] < 0 else
                                                                     f"to class {c['target']}")
              + (f", {c['eps'] * 255:.0f}/255" if "eps" in c else "")}
             for c in res.get("attack_check") or []]
    return ("\n".join(lines) + "\n\nASR: the published attack success rate (wrong under the UAP among images right "
            "when clean); white-box columns: the suite fitted against the model itself; standard's UAP: the "
            "standard model's UAP of the same seed and setting. Empty cells: the standard model's own UAP is its "
            "white-box one.\n" + check_table(check))


TABLES = {"01_headline": headline_table, "06_published_method": published_table}
