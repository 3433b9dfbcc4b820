"""The claims rules are total: every claims function gives a row, with a verdict, for any rows it
may be handed (zero, equal, NaN or missing rates, one seed, an empty group, no rows at all). Where
a ratio or a verdict cannot be formed, the row says ``inconclusive: <why>`` instead of raising."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtlib import study as S

VERDICTS = ("holds", "partly", "does not hold", "not measured")
STUDY = S.setup("smoke", {"ks": [1, 2, 5, 10], "l2_radii": [0.5, 1.0], "transfer_backbones": ["cnn", "vgg"]})
ARMS = ("standard", "pgd_at", "uat", "dt_k1", "dt_nodiv", "dt_literal", "dt_div", "dt_best")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# the degenerate values first: hypothesis shrinks towards them and draws them often
RATE = st.one_of(st.sampled_from([0.0, 1.0, 0.5, float("nan"), None]), st.floats(0, 1))
RATIO = st.one_of(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), None]), st.floats(0, 20))


def rows_of(**columns):
    """Lists of rows whose keys are drawn from ``columns``; any key may be absent from a row."""
    return st.lists(st.fixed_dictionaries({}, optional=columns), max_size=30)


def check(rows):
    assert isinstance(rows, list) and rows
    for r in rows:
        assert {"claim", "what", "seed", "measured", "setting", "verdict"} <= set(r)
        assert isinstance(r["measured"], str) and isinstance(r["setting"], str)
        v = r["verdict"]
        if v.startswith("inconclusive"):
            assert v.startswith("inconclusive: ") and len(v) > len("inconclusive: ") + 5, v
        else:
            assert v.startswith(VERDICTS), v


@FAST
@given(rows_of(arm=st.sampled_from(ARMS), eval=st.sampled_from(["head0", "ensemble"]), seed=st.integers(0, 2),
               clean_acc=RATE, fooling_rate=RATE, uap_acc=RATE, random_fooling_rate=RATE, cost_ratio=RATIO),
       st.one_of(st.none(), st.fixed_dictionaries({}, optional={"best": st.fixed_dictionaries(
           {}, optional={"lambda_div": RATE, "lambda_adv": RATE})})))
def test_headline_claims_are_total(rows, selection):
    out = S.headline_claims(rows, STUDY, selection)
    check(out)
    assert [c["claim"] for c in out] == ["C1", "C1-ctl", "C2", "C3", "C4-wall"]


@FAST
@given(st.dictionaries(st.sampled_from([1, 2, 5, 10]), st.just({})),
       rows_of(heads=st.sampled_from([1, 2, 5, 10]), eval=st.sampled_from(["ensemble", "single"]),
               seed=st.integers(0, 2), fooling_rate=RATE))
def test_k_claims_are_total(ens, rows):
    check(S.k_claims(ens, rows, STUDY))


@FAST
@given(rows_of(arm=st.sampled_from(S.CROSS_ARMS), norm=st.sampled_from(["linf", "l2"]),
               radius=st.sampled_from([0.5, 1.0, 10 / 255]), seed=st.integers(0, 2), uap_acc=RATE, fooling_rate=RATE))
def test_cross_claims_are_total(rows):
    check(S.cross_claims(rows, STUDY))


NAMES = [f"{bb}/{arm}" for bb in ("cnn", "vgg") for arm in ("standard", "dt_div", "uat", "pgd_at")]


@FAST
@given(rows_of(source=st.sampled_from(NAMES), target=st.sampled_from(NAMES), fooling_rate=RATE))
def test_transfer_claims_are_total(rows):
    check(S.transfer_claims(rows, STUDY))


@FAST
@given(st.dictionaries(st.sampled_from(["pgd_at", "dt_k5", "single_head_k5", "ensemble_k5", "uat"]), RATIO))
def test_cost_claims_are_total(ratios):
    check(S.cost_claims(ratios, STUDY))


def _rows(std_fr, dt_fr, floor=0.05, seeds=(0, 1)):
    rows = []
    for s in seeds:
        for arm, key, fr in (("standard", "head0", std_fr), ("pgd_at", "head0", 0.3), ("uat", "head0", 0.5),
                             ("dt_k1", "head0", 0.6), ("dt_nodiv", "ensemble", 0.6), ("dt_literal", "ensemble", 0.7),
                             ("dt_best", "ensemble", dt_fr), ("dt_best", "head0", dt_fr), ("dt_div", "ensemble", dt_fr)):
            rows.append({"arm": arm, "eval": key, "seed": s, "clean_acc": 0.8, "fooling_rate": fr + 0.001 * s,
                         "uap_acc": 0.5, "random_fooling_rate": floor, "cost_ratio": 3.0 if arm.startswith("dt") else 1.0})
    return rows


def test_an_undertrained_pgd_model_makes_c3_inconclusive():
    rows = _rows(0.8, 0.15)
    for r in rows:
        if r["arm"] == "pgd_at":
            r["clean_acc"] = 0.3
    c3 = {c["claim"]: c for c in S.headline_claims(rows, S.setup("smoke"))}["C3"]
    assert c3["verdict"].startswith("inconclusive: PGD-AT is undertrained")


def test_headline_claims_are_computed_from_the_rows():
    st = S.setup("smoke")
    by = lambda rows: {c["claim"]: c for c in S.headline_claims(rows, st)}
    c = by(_rows(0.8, 0.15))
    assert c["C1"]["verdict"] == "holds" and c["C1"]["effect"] == pytest.approx((0.8 - 0.15) / 0.8, abs=1e-2)
    assert c["C1-ctl"]["verdict"] == "holds"  # 0.15 vs the best control's 0.5
    assert c["C2"]["verdict"] == "holds" and c["C4-wall"]["verdict"] == "partly"  # 3.0x vs 2.3x
    assert "80.0%" in c["C1"]["measured"] and "15.0%" in c["C1"]["measured"]
    assert by(_rows(0.8, 0.6))["C1"]["verdict"] == "partly"
    assert by(_rows(0.8, 0.79))["C1"]["verdict"] == "does not hold"
    # an attack no stronger than random noise makes every fooling-rate claim inconclusive
    weak = by(_rows(0.06, 0.01, floor=0.06))
    assert weak["C1"]["verdict"].startswith("inconclusive") and weak["C3"]["verdict"].startswith("inconclusive")


def test_a_standard_model_never_fooled_makes_c1_inconclusive_not_an_error():
    """The fp32 smoke run that raised ZeroDivisionError: the standard model's fooling rate was 0."""
    c = {r["claim"]: r for r in S.headline_claims(_rows(0.0, 0.0, floor=0.0, seeds=(0,)), STUDY)}
    assert c["C1"]["verdict"] == S.INCONCLUSIVE and math.isnan(c["C1"]["effect"])
    assert c["C1-ctl"]["verdict"] == S.INCONCLUSIVE
    assert c["C2"]["verdict"] == "holds (one seed)"  # accuracy needs no fooling


def test_equal_rates_do_not_hold_and_missing_arms_are_named():
    c = {r["claim"]: r for r in S.headline_claims(_rows(0.6, 0.6), STUDY)}
    assert c["C1"]["verdict"] == "does not hold" and c["C1"]["effect"] == 0
    rows = [r for r in _rows(0.8, 0.2) if r["arm"] != "dt_best"]
    c = {r["claim"]: r for r in S.headline_claims(rows, STUDY)}
    assert c["C1"]["verdict"] == "inconclusive: no measurement of DT (chosen, ensemble)"
    assert c["C2"]["verdict"] == "inconclusive: no measurement of DT's accuracy"
    assert c["C4-wall"]["verdict"].startswith("inconclusive: no measurement")
    assert "n/a (n=0)" in c["C1"]["measured"]


def test_no_rows_at_all_still_give_every_claim():
    assert all(r["verdict"].startswith(("inconclusive: ", "not measured")) for r in S.headline_claims([], STUDY))
    assert S.k_claims({}, [], STUDY)[0]["verdict"] == "not measured"
    assert S.cross_claims([], STUDY)[0]["verdict"].startswith("inconclusive: no measurement of DT, UAT or PGD-AT")
    assert S.transfer_claims([], STUDY)[0]["verdict"] == "not measured"
    assert all(r["verdict"].startswith("inconclusive: ") for r in S.cost_claims({}, STUDY))


def test_a_k_never_fooled_is_inconclusive():
    rows = [{"heads": k, "eval": "ensemble", "seed": 0, "fooling_rate": 0.0} for k in (2, 10)]
    assert S.k_claims({2: {}, 10: {}}, rows, STUDY)[0]["verdict"].startswith("inconclusive: K=2 is never fooled")


@pytest.mark.parametrize("rule, bad", [(S.cost_verdict, (float("nan"), 2.3)), (S.figure_verdict, (0.0, 8.0)),
                                       (S.overhead_verdict, (float("nan"),)), (S.accuracy_cost_verdict, (float("nan"),)),
                                       (S.verdict, (float("nan"), 0.8, 0.02)), (S.verdict, (0.5, 0.8, float("nan")))])
def test_every_rule_is_inconclusive_on_numbers_it_cannot_judge(rule, bad):
    assert rule(*bad).startswith("inconclusive: ")
