"""The study's verdict rules, shared by every claims row (docs/protocol.md section 4): the mean and
spread of a group of rates, the noise margin, and one rule per kind of claim (an effect, a cost
bound, a reported figure, an accuracy cost, an overhead), plus the gate on the attack check.
Torch-free; rates are fractions in [0, 1]."""
from __future__ import annotations

import math
import statistics
from typing import Any


def mean_spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and n of the finite values (None and
    NaN are missing, not zero)."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    try:
        return {"mean": statistics.fmean(vals) if vals else float("nan"),
                "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}
    except OverflowError:  # not rates at all (|v| near 1e308): no measurement to read
        return {"mean": float("nan"), "std": None, "n": 0}


def fmt(ms: dict[str, Any], pct: bool = True) -> str:
    if not ms["n"]:
        return "n/a (n=0)"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}x")
    spread = f" ± {(100 if pct else 1) * ms['std']:.1f}{'pt' if pct else 'x'}" if ms["std"] is not None else ""
    return f"{f(ms['mean'])}{spread} (n={ms['n']})"


def ratio(num: float | None, den: float | None) -> float:
    """``num / den``, NaN where it cannot be formed (a zero, missing or non-finite term)."""
    return num / den if finite(num, den) and den != 0 else float("nan")


def machine_ratio(num: float | None, den: float | None, machine: str | None, den_machine: str | None) -> float:
    """A wall-time ratio ``num / den`` of two runs, NaN unless both were timed on the same kind of
    machine (``machine``: the CPU or GPU the run names in its provenance): across machines it would
    measure the hardware, not the method."""
    return ratio(num, den) if machine is not None and machine == den_machine else float("nan")


def finite(*values: float | None) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def inconclusive(why: str) -> str:
    return f"inconclusive: {why}"


def missing(**groups: dict[str, Any]) -> str | None:
    """``inconclusive: no measurement of ...`` naming each compared group without a finite value
    (``mean_spread`` with n = 0), or None when every group has one."""
    empty = [name for name, ms in groups.items() if not ms["n"]]
    return inconclusive(f"no measurement of {', '.join(empty)}") if empty else None


INCONCLUSIVE = inconclusive("the UAP does not beat the random floor on the standard model")
MIN_NOISE = 0.02  # an absolute difference of rates below 2 points is never read as an effect
ORDER = ("does not hold", "partly", "holds")  # verdicts from weakest to strongest


def noise(*stats: dict[str, Any]) -> float:
    """Twice the combined standard deviation of the compared means, at least MIN_NOISE."""
    var = sum((s["std"] or 0.0) ** 2 for s in stats)
    return max(MIN_NOISE, 2 * math.sqrt(var))


def verdict(effect: float, seed_effect: float, margin: float) -> str:
    """The rule for an effect claim. ``effect`` is the measured change in the claim's direction
    (positive = as claimed), ``seed_effect`` the seed's, both on the same scale; ``margin`` the
    smallest change read as real on that scale. holds: at least half the seed's effect and beyond
    the margin; partly: beyond the margin but under half; does not hold: otherwise; inconclusive
    when the effect or the margin is not a number (e.g. a ratio over a zero rate)."""
    if not finite(effect, seed_effect, margin):
        return inconclusive("the effect cannot be formed from these numbers (a zero or missing rate)")
    if effect <= margin:
        return "does not hold"
    return "holds" if effect >= seed_effect / 2 else "partly"


def direction_verdict(effect: float, margin: float) -> str:
    """The rule for a claim of a direction with no figure to reach at this scale (06's P1 and P3):
    holds if the change in the claimed direction is beyond ``margin``, does not hold otherwise;
    inconclusive when either is not a number."""
    if not finite(effect, margin):
        return inconclusive("the effect cannot be formed from these numbers (a missing rate)")
    return "holds" if effect > margin else "does not hold"


def cost_verdict(measured: float, claimed: float) -> str:
    """The rule for a cost bound ("costs only X"): holds if at most 10% over the claimed cost,
    partly if at most 50% over, does not hold otherwise."""
    if not (finite(measured) and measured > 0):
        return inconclusive(f"the measured cost {measured} is not a positive number")
    return "holds" if measured <= claimed * 1.1 else "partly" if measured <= claimed * 1.5 else "does not hold"


def figure_verdict(measured: float, claimed: float) -> str:
    """The rule for a reported figure ("PGD-AT costs 8x"): holds within 25% of it either way,
    partly within a factor of 2, does not hold otherwise."""
    if not (finite(measured) and measured > 0):
        return inconclusive(f"the measured figure {measured} is not a positive number")
    r = measured / claimed
    return "holds" if 0.75 <= r <= 1.25 else "partly" if 0.5 <= r <= 2 else "does not hold"


def accuracy_cost_verdict(drop: float) -> str:
    """The rule for "DT costs (almost) no clean accuracy": holds if the mean drop is at most 1
    point, partly if at most 3 points, does not hold otherwise."""
    if not finite(drop):
        return inconclusive("the accuracy drop cannot be formed (a missing accuracy)")
    return "holds" if drop <= 0.01 else "partly" if drop <= 0.03 else "does not hold"


def overhead_verdict(ratio_: float) -> str:
    """The rule for "no inference overhead": holds if within 5% of the plain model (timing noise),
    partly within 20%, does not hold otherwise."""
    if not (finite(ratio_) and ratio_ > 0):
        return inconclusive(f"the latency ratio {ratio_} is not a positive number")
    return "holds" if ratio_ <= 1.05 else "partly" if ratio_ <= 1.2 else "does not hold"


def _check_status(check: list[dict[str, Any]], arms: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The arms (each with the fields its check rows must equal) whose check failed, and those without a row."""
    failed, unchecked = [], []
    for arm, where in arms.items():
        rows = [r for r in check if r.get("arm") == arm and all(r.get(k) == v for k, v in where.items())]
        if not rows:
            unchecked.append(arm)
        elif not all(r.get("converged") for r in rows):
            failed.append(arm)
    return sorted(failed), sorted(unchecked)


def _not_converged(failed: list[str], unchecked: list[str]) -> str | None:
    """The inconclusive verdict naming the arms whose check failed and those it has no row for; None if neither."""
    why = " and not ".join(([f"converged on {', '.join(failed)}"] if failed else [])
                           + ([f"checked on {', '.join(unchecked)}"] if unchecked else []))
    return inconclusive(f"attack not {why}") if why else None


def unconverged(check: list[dict[str, Any]] | None, *arms: str, **where: Any) -> str | None:
    """``inconclusive: attack not converged on ...`` when the attack check (``attack_check`` rows)
    failed for any of ``arms`` (among the rows whose fields equal ``where``, e.g. ``eval="ensemble"``
    or ``norm="l2"``), ``... not checked on ...`` when a check was run but has no such row for one of
    them; None when it passed for all of them, or no check was run (None)."""
    return None if check is None else _not_converged(*_check_status(check, {arm: where for arm in arms}))


def gate(check: list[dict[str, Any]] | None, result: str, reference: dict[str, dict[str, Any]],
         defended: dict[str, dict[str, Any]]) -> str:
    """The attack check's gate on a claim that the ``defended`` arms are fooled less than the
    ``reference`` arms (each arm mapped to the fields its check rows must equal, e.g.
    ``{"eval": "ensemble"}``): ``result`` where every arm's attack converged (or no check was run);
    otherwise ``inconclusive: attack not converged on ...`` (``not checked`` for an arm without a
    row), with one exception. A fooling rate is a lower bound on what the strongest UAP achieves,
    so where only defended arms failed and ``result`` is already "does not hold", a stronger attack
    could only raise their fooling rates and widen the gap the claim lacks: the verdict stands,
    marked (``does not hold; attack not converged on ..., which a stronger attack could only fool more``)."""
    if check is None:
        return result
    ref_failed, ref_unchecked = _check_status(check, reference)
    def_failed, def_unchecked = _check_status(check, defended)
    if def_failed and not (ref_failed or ref_unchecked or def_unchecked) and result == "does not hold":
        return f"{result}; attack not converged on {', '.join(def_failed)}, which a stronger attack could only fool more"
    return _not_converged(sorted(ref_failed + def_failed), sorted(ref_unchecked + def_unchecked)) or result
