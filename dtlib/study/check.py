"""The attack check: has the evaluation attack converged? (docs/protocol.md section 3.)

Each model a notebook reports is attacked again by a clearly larger suite (``stronger``). Where that
raises its fooling rate (or lowers its accuracy under UAP, or raises a targeted success rate) by
more than MIN_NOISE, the weaker suite's figure is not a result: the evaluation climbs the ladder of
suites (``suite_at``: level n is ``stronger`` applied n times), reports the stronger suite's figures
and is checked again by the next level, up to level ``MAX_LEVEL``. Only a figure that no level
evaluated beats by more than MIN_NOISE stands; where one does (the last pair still differs, or the
evaluation climbed for another inference mode and a weaker level found more in this one), the row
stays unconverged and every claim resting on it inconclusive. The notebooks take their figures at
the level the check settles on (``suite_for``). A level-2 evaluation costs several times a level-1
one (4x the fitting images and the cap, more random starts): it is asked for only where both
levels below it were scored and differ.
"""
from __future__ import annotations

from typing import Any, Callable

from ..config import Config
from .claims import MIN_NOISE
from .settings import Study

# levels 0 (the suite), 1 (its check) and 2 (the check of a level-1 figure)
MAX_LEVEL = 2


def stronger(c: Config) -> dict[str, Any]:
    """The clearly larger suite ``attack_check`` compares with: twice the fitting images and the cap,
    more than twice the random starts of the best settings, twice the stopping rule's window and
    half its tolerance."""
    return dict(uap_fit_size=2 * c.uap_fit_size, uap_epochs=2 * c.uap_epochs, uap_refine=2 * c.uap_refine + 2,
                uap_window=2 * c.uap_window, uap_tol=c.uap_tol / 2)


def suite_at(c: Config, level: int) -> dict[str, Any]:
    """The Config overrides of the suite at ``level`` of the ladder: none at 0, ``stronger`` applied
    ``level`` times after that (level 1 is the check's suite)."""
    out: dict[str, Any] = {}
    for _ in range(level):
        out = stronger(c.replace(**out))
    return out


def _compare(b: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """One inference mode's row: the suite ``b`` against the stronger suite ``s`` (their metrics)."""
    rise, drop = s["fooling_rate"] - b["fooling_rate"], b["uap_acc"] - s["uap_acc"]
    row = {"fooling_rate": b["fooling_rate"], "stronger_fooling_rate": s["fooling_rate"], "rise": rise,
           "uap_acc": b["uap_acc"], "stronger_uap_acc": s["uap_acc"], "acc_drop": drop,
           "n_fit": b["n_fit"], "stronger_n_fit": s["n_fit"],
           # whether every fit of each suite stopped by the stopping rule rather than at its cap
           "fits_stopped": b.get("converged"), "stronger_fits_stopped": s.get("converged")}
    ok = rise <= MIN_NOISE and drop <= MIN_NOISE
    if b.get("targeted_success") is not None:
        row |= {"targeted_success": b["targeted_success"], "stronger_targeted_success": s["targeted_success"],
                "targeted_rise": s["targeted_success"] - b["targeted_success"]}
        ok = ok and row["targeted_rise"] <= MIN_NOISE
    return {**row, "converged": ok}


def _scored(metrics: dict[str, Any]) -> bool:
    """Whether an evaluation's metrics are real: ``fill``'s plan answers with stand-ins marked ``placeholder``."""
    return not any(m.get("placeholder") for m in metrics.values())


def attack_check(study: Study, models: list[tuple[dict[str, Any], dict[str, Any]]],
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each of ``models`` (``(tags, overrides)``: the row's labels, e.g. ``{"arm": "dt_div", "seed": 0}``,
    and the run's Config overrides, seed included) attacked by the suite and again by the ``stronger``
    one; where any inference mode fails (its fooling rate rises by more than MIN_NOISE, its accuracy
    under UAP falls by more, or a targeted evaluation's targeted success rises by more) and both
    suites were scored, the stronger suite's evaluation is checked in turn by the next level, up to
    MAX_LEVEL. One row per mode, at the level where the ladder stopped (``level``: that of the
    figures reported; ``ladder``: the fooling rate at each level evaluated). The ladder climbs per
    evaluation, so a mode that passed may report a level whose figure is lower than a weaker
    level's (UAP fits land in different optima): a row converges only where no level evaluated,
    weaker or stronger, beats its figures by more than MIN_NOISE (``beaten_by_level`` names the
    weaker ones that do). A claim resting on a row not ``converged`` reads inconclusive (``rules.gate``)."""
    out = []
    for tags, o in models:
        level, base = 0, study.run(log, **o).metrics["eval"]
        ladder = [base]
        while True:
            more = suite_at(study.config, level + 1)
            strong = study.run(log, **o, **more).metrics["eval"]
            ladder.append(strong)
            rows = {key: _compare(base[key], strong[key]) for key in base}
            if all(r["converged"] for r in rows.values()) or level + 1 >= MAX_LEVEL or not (_scored(base) and _scored(strong)):
                break
            level, base = level + 1, strong
        for key, row in rows.items():
            # a weaker level that beats the reported figures is a suite of ours that found more
            beaten = [n for n in range(level) if not _compare(base[key], ladder[n][key])["converged"]]
            out.append({**tags, "eval": key, **row, "converged": row["converged"] and not beaten, "level": level,
                        "beaten_by_level": beaten, "stronger": more, "ladder": [m[key]["fooling_rate"] for m in ladder]})
    return out


def suite_for(study: Study, check: list[dict[str, Any]], tags: dict[str, Any]) -> dict[str, Any]:
    """The Config overrides of the suite whose figures a notebook reports for the model ``tags``
    names (its check rows carry them all): the level its attack check settled on, the suite itself
    (no overrides) where the check did not take the model or settled at level 0."""
    levels = [c["level"] for c in check if all(c.get(k) == v for k, v in tags.items())]
    return suite_at(study.config, max(levels, default=0))


def unsettled(study: Study, models: list[tuple[dict[str, Any], dict[str, Any]]],
              log: Callable[[str], None] = print) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Those of ``models`` (``(tags, overrides)``, as ``attack_check`` takes them) whose evaluation
    has a fit that reached the suite's cap before its stopping rule stopped it, in any inference
    mode (``converged`` false): such an evaluation may not have found its best UAP, so the attack
    check takes it too, whatever its seed or setting. Read from the run cache (a run not evaluated
    yet counts as stopped: ``fill`` asks again once it is scored)."""
    return [(t, o) for t, o in models
            if not all(m.get("converged", True) for m in study.run(log, **o).metrics["eval"].values())]


def checked_seeds(study: Study, models: list[tuple[dict[str, Any], dict[str, Any]]], seeds: tuple[int, ...],
                  log: Callable[[str], None] = print) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``attack_check``'s models for ``models`` (``(tags, overrides)`` without the seed) reported
    over ``seeds``: each at the first seed, and at the others those ``unsettled`` finds."""
    return checked(study, [({**t, "seed": s}, {**o, "seed": s}) for s in seeds for t, o in models],
                   lambda tags: tags["seed"] == seeds[0], log)


def checked(study: Study, models: list[tuple[dict[str, Any], dict[str, Any]]], always: Callable[[dict[str, Any]], bool],
            log: Callable[[str], None] = print) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``attack_check``'s models of ``models`` (``(tags, overrides)``): those whose tags ``always``
    picks (the first seed, 06's largest radius), then those of the others ``unsettled`` finds."""
    return [m for m in models if always(m[0])] + unsettled(study, [m for m in models if not always(m[0])], log)
