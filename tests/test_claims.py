"""The claims rules are total: every claims function gives a row, with a verdict, for any rows it
may be handed (zero, equal, NaN or missing rates, one seed, an empty group, no rows at all). Where
a ratio or a verdict cannot be formed, the row says ``inconclusive: <why>`` instead of raising."""
import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtlib import study as S
from dtlib.config import ATTACK_VERSION
from dtlib.tables import (EARLIER_SUITE, PRE_SUITE, attack_version, check_table, claims_table, headline_table, published_table,
                          verdict_changes)
from dtlib.study import claims as C

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
    out = C.headline_claims(rows, STUDY, selection)
    check(out)
    assert [c["claim"] for c in out] == ["C1", "C1-ctl", "C2", "C3", "C4-wall"]


@FAST
@given(st.dictionaries(st.sampled_from([1, 2, 5, 10]), st.just({})),
       rows_of(heads=st.sampled_from([1, 2, 5, 10]), eval=st.sampled_from(["ensemble", "single"]),
               seed=st.integers(0, 2), fooling_rate=RATE))
def test_k_claims_are_total(ens, rows):
    check(C.k_claims(ens, rows, STUDY))


@FAST
@given(rows_of(arm=st.sampled_from(S.CROSS_ARMS), norm=st.sampled_from(["linf", "l2"]),
               radius=st.sampled_from([0.5, 1.0, 10 / 255]), seed=st.integers(0, 2), uap_acc=RATE, fooling_rate=RATE))
def test_cross_claims_are_total(rows):
    check(C.cross_claims(rows, STUDY))


NAMES = [f"{bb}/{arm}" for bb in ("cnn", "vgg") for arm in ("standard", "dt_div", "uat", "pgd_at")]


@FAST
@given(rows_of(source=st.sampled_from(NAMES), target=st.sampled_from(NAMES), fooling_rate=RATE))
def test_transfer_claims_are_total(rows):
    check(C.transfer_claims(rows, STUDY))


@FAST
@given(st.dictionaries(st.sampled_from(["pgd_at", "dt_k5", "single_head_k5", "ensemble_k5", "uat"]), RATIO))
def test_cost_claims_are_total(ratios):
    check(C.cost_claims(ratios, STUDY))


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
    c3 = {c["claim"]: c for c in C.headline_claims(rows, S.setup("smoke"))}["C3"]
    assert c3["verdict"].startswith("inconclusive: PGD-AT is undertrained")


def test_headline_claims_are_computed_from_the_rows():
    st = S.setup("smoke")
    by = lambda rows: {c["claim"]: c for c in C.headline_claims(rows, st)}
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
    c = {r["claim"]: r for r in C.headline_claims(_rows(0.0, 0.0, floor=0.0, seeds=(0,)), STUDY)}
    assert c["C1"]["verdict"] == C.INCONCLUSIVE and math.isnan(c["C1"]["effect"])
    assert c["C1-ctl"]["verdict"] == C.INCONCLUSIVE
    assert c["C2"]["verdict"] == "holds (one seed)"  # accuracy needs no fooling


def test_equal_rates_do_not_hold_and_missing_arms_are_named():
    c = {r["claim"]: r for r in C.headline_claims(_rows(0.6, 0.6), STUDY)}
    assert c["C1"]["verdict"] == "does not hold" and c["C1"]["effect"] == 0
    rows = [r for r in _rows(0.8, 0.2) if r["arm"] != "dt_best"]
    c = {r["claim"]: r for r in C.headline_claims(rows, STUDY)}
    assert c["C1"]["verdict"] == "inconclusive: no measurement of DT (chosen, ensemble)"
    assert c["C2"]["verdict"] == "inconclusive: no measurement of DT's accuracy"
    assert c["C4-wall"]["verdict"].startswith("inconclusive: no measurement")
    assert "n/a (n=0)" in c["C1"]["measured"]


def test_no_rows_at_all_still_give_every_claim():
    assert all(r["verdict"].startswith(("inconclusive: ", "not measured")) for r in C.headline_claims([], STUDY))
    assert C.k_claims({}, [], STUDY)[0]["verdict"] == "not measured"
    assert C.cross_claims([], STUDY)[0]["verdict"].startswith("inconclusive: no measurement of DT, UAT or PGD-AT")
    assert C.transfer_claims([], STUDY)[0]["verdict"] == "not measured"
    assert all(r["verdict"].startswith("inconclusive: ") for r in C.cost_claims({}, STUDY))


def test_a_k_never_fooled_is_inconclusive():
    rows = [{"heads": k, "eval": "ensemble", "seed": 0, "fooling_rate": 0.0} for k in (2, 10)]
    assert C.k_claims({2: {}, 10: {}}, rows, STUDY)[0]["verdict"].startswith("inconclusive: K=2 is never fooled")


@pytest.mark.parametrize("rule, bad", [(C.cost_verdict, (float("nan"), 2.3)), (C.figure_verdict, (0.0, 8.0)),
                                       (C.overhead_verdict, (float("nan"),)), (C.accuracy_cost_verdict, (float("nan"),)),
                                       (C.verdict, (float("nan"), 0.8, 0.02)), (C.verdict, (0.5, 0.8, float("nan"))),
                                       (C.direction_verdict, (float("nan"), 0.02))])
def test_every_rule_is_inconclusive_on_numbers_it_cannot_judge(rule, bad):
    assert rule(*bad).startswith("inconclusive: ")


def test_verdict_rules():
    assert C.verdict(0.5, 0.8, 0.02) == "holds"        # at least half the seed's effect
    assert C.verdict(0.3, 0.8, 0.02) == "partly"       # real but under half
    assert C.verdict(0.01, 0.8, 0.02) == "does not hold"  # within noise
    assert C.verdict(-0.2, 0.8, 0.02) == "does not hold"  # the other way
    assert C.verdict(float("nan"), 0.8, 0.02).startswith("inconclusive: ")
    assert C.cost_verdict(2.5, 2.3) == "holds" and C.cost_verdict(3.1, 2.3) == "partly"
    assert C.cost_verdict(3.5, 2.3) == "does not hold" and C.cost_verdict(1.0, 2.3) == "holds"
    assert C.figure_verdict(6.5, 8) == "holds" and C.figure_verdict(4.5, 8) == "partly"
    assert C.figure_verdict(20, 8) == "does not hold"
    assert C.overhead_verdict(1.01) == "holds" and C.overhead_verdict(1.5) == "does not hold"
    assert C.accuracy_cost_verdict(0.004) == "holds" and C.accuracy_cost_verdict(0.05) == "does not hold"
    one = C.claim("C9", "w", "s", "m", "set", "holds", n=1)
    assert one["verdict"] == "holds (one seed)"


def test_noise_is_twice_the_combined_spread_with_a_floor():
    a, b = C.mean_spread([0.5, 0.7]), C.mean_spread([0.1, 0.1])
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(math.sqrt(0.02))
    assert C.noise(a, b) == pytest.approx(2 * math.sqrt(0.02))
    assert C.noise(C.mean_spread([0.3]), C.mean_spread([0.4])) == C.MIN_NOISE
    assert C.fmt(C.mean_spread([0.5])) == "50.0% (n=1)"


def test_a_cost_ratio_is_formed_only_between_runs_timed_on_the_same_kind_of_machine():
    amd, intel = "cpu (AMD EPYC; avx512_bf16, x86_64, 2 threads)", "cpu (Intel Xeon; amx_bf16, x86_64, 2 threads)"
    assert C.machine_ratio(300.0, 100.0, amd, amd) == pytest.approx(3.0)
    assert math.isnan(C.machine_ratio(300.0, 100.0, amd, intel)) and math.isnan(C.machine_ratio(300.0, 100.0, None, None))
    # summarised over seeds: the ratio's own n where it has fewer values than the rates, and the table says so
    rows = [{"arm": "dt_k1", "eval": "head0", "fooling_rate": f, "cost_ratio": c}
            for f, c in ((0.4, C.machine_ratio(300.0, 100.0, amd, intel)), (0.5, C.machine_ratio(280.0, 100.0, amd, amd)))]
    (row,) = C.summarise(rows, ("arm", "eval"), ("fooling_rate", "cost_ratio"))
    assert row["n"] == 2 and row["cost_ratio"] == pytest.approx(2.8) and row["cost_ratio_n"] == 1
    (same,) = C.summarise(rows[1:], ("arm", "eval"), ("fooling_rate", "cost_ratio"))
    assert same["n"] == 1 and "cost_ratio_n" not in same
    metrics = dict(clean_acc=0.5, clean_acc_std=None, fooling_rate=0.45, fooling_rate_std=None, uap_acc=0.4,
                   uap_acc_std=None, random_fooling_rate=0.1, random_fooling_rate_std=None)
    res = {"table": [{**row, **metrics}, {**row, **metrics, "arm": "uat", "cost_ratio": float("nan"), "cost_ratio_n": 0}],
           "selection": {"best": {"lambda_div": 0.0, "lambda_adv": 1.0}}}
    table = headline_table(res)
    assert "| 2.80x (n=1) |  | 2 |" in table and "| n/a (n=0) |  | 2 |" in table


def test_the_published_table_reads_each_arm_in_its_deployed_mode_per_radius():
    """06's table: one line per (arm, radius), the ensemble where the arm has heads, the white-box and
    transferred columns from their rows, the standard model's transferred cells empty."""
    def row(arm, ev, eps, target, attack, asr, ts=None):
        return {"arm": arm, "eval": ev, "eps": eps, "target": target, "attack": attack, "clean_acc": 0.6,
                "clean_acc_std": 0.01, "fooling_rate": asr - 0.1, "fooling_rate_std": None, "asr": asr, "asr_std": None,
                "targeted_success": ts, "targeted_success_std": None, "n": 2}
    table = [row("standard", "head0", 8 / 255, -1, "white-box", 0.5), row("standard", "head0", 8 / 255, 9, "white-box", 0.4, 0.3),
             row("dt_best", "head0", 8 / 255, -1, "white-box", 0.9)]
    table += [row("dt_best", "ensemble", 8 / 255, t, a, x, None if t < 0 else x / 2)
              for t in (-1, 9) for a, x in (("white-box", 0.3), ("standard's UAP", 0.2))]
    check = [{"arm": "dt_best", "eval": "ensemble", "target": 9, "fooling_rate": 0.3, "stronger_fooling_rate": 0.31,
              "uap_acc": 0.4, "stronger_uap_acc": 0.4, "n_fit": 100, "stronger_n_fit": 200, "converged": True,
              "stronger": {"uap_refine": 2}, "targeted_success": 0.2, "stronger_targeted_success": 0.21}]
    lines = published_table({"table": table, "attack_check": check}).splitlines()
    assert "to class 9 (%)" in lines[0]
    assert lines[2] == "| standard | head0 | 8/255 | 60.0 ± 1.0 | 50.0 | 40.0 |  | 40.0 | 30.0 |  |  | 2 |"
    assert lines[3] == "| DT (chosen) | ensemble | 8/255 | 60.0 ± 1.0 | 30.0 | 20.0 | 20.0 | 30.0 | 15.0 | 20.0 | 10.0 | 2 |"
    assert len([x for x in lines if x.startswith("| DT (chosen) |")]) == 1  # its head0 rows are not deployed
    assert "| DT (chosen), to class 9 | ensemble | 30.0 | 31.0 | 40.0 | 40.0 | 20.0 | 21.0 | 100 / 200 | yes |" in lines
    assert "targeted UAP's success rate rises by at most" in lines[-5]


# ---------------------------------------------------------------------------------------------
# every verdict of each experiment's claims function, from synthetic rows (one seed: "(one seed)")

@pytest.mark.parametrize("k2, k10, expected", [(0.5, 0.2, "holds"), (0.5, 0.4, "partly"), (0.5, 0.5, "does not hold"),
                                               (0.5, 0.6, "does not hold")])
def test_k_claims_reach_each_verdict(k2, k10, expected):
    """C6: relative fall of the ensemble's fooling rate from K=2 to K=10 against the seed's 59%."""
    rows = [{"heads": k, "eval": "ensemble", "seed": 0, "fooling_rate": fr} for k, fr in ((2, k2), (10, k10))]
    (row,) = C.k_claims({2: {}, 5: {}, 10: {}}, rows, STUDY)
    assert row["verdict"] == f"{expected} (one seed)"
    assert row["effect"] == pytest.approx((k2 - k10) / k2)
    assert C.k_claims({5: {}}, rows, STUDY)[0]["verdict"] == "not measured"


def _l2_rows(dt, uat, pgd, radii=(0.5, 1.0)):
    return [{"arm": arm, "norm": "l2", "radius": r, "seed": 0, "uap_acc": acc, "fooling_rate": 1 - acc}
            for r in radii for arm, acc in (("dt_div", dt), ("uat", uat), ("pgd_at", pgd))]


@pytest.mark.parametrize("dt, uat, pgd, expected", [(0.8, 0.3, 0.2, "holds"), (0.5, 0.3, 0.2, "partly"),
                                                    (0.3, 0.3, 0.2, "does not hold"), (0.3, 0.1, 0.4, "does not hold")])
def test_cross_claims_reach_each_verdict(dt, uat, pgd, expected):
    """C7: DT's accuracy under L2 UAPs against the stronger of UAT and PGD-AT, at every radius."""
    (row,) = C.cross_claims(_l2_rows(dt, uat, pgd), STUDY)
    assert row["verdict"] == f"{expected} (one seed)"
    assert row["effect"] == pytest.approx(dt - max(uat, pgd))


def test_cross_claims_take_the_weakest_radius_and_name_a_missing_one():
    rows = _l2_rows(0.8, 0.3, 0.2, radii=(0.5,)) + _l2_rows(0.3, 0.3, 0.2, radii=(1.0,))
    assert C.cross_claims(rows, STUDY)[0]["verdict"] == "does not hold (one seed)"
    partial = [r for r in _l2_rows(0.8, 0.3, 0.2) if not (r["arm"] == "dt_div" and r["radius"] == 1.0)]
    assert C.cross_claims(partial, STUDY)[0]["verdict"] == "inconclusive: no measurement of DT at r=1"
    no_l2 = dataclasses.replace(STUDY, l2_radii=())
    assert C.cross_claims(partial, no_l2)[0]["verdict"] == "not measured"


@pytest.mark.parametrize("on_dt, expected", [(0.1, "holds"), (0.4, "partly"), (0.5, "does not hold"),
                                             (0.7, "does not hold")])
def test_transfer_claims_reach_each_verdict(on_dt, expected):
    """C8: UAPs from the other architecture transfer to the DT target (``on_dt``) vs the standard
    target (0.5) of the same architecture; the seed's change is -64%."""
    rows = [{"source": f"{src}/standard", "target": f"{bb}/{arm}", "fooling_rate": 0.5 if arm == "standard" else on_dt}
            for src, bb in (("vgg", "cnn"), ("cnn", "vgg")) for arm in ("standard", "dt_div")]
    rows += [{"source": "cnn/standard", "target": "cnn/dt_div", "fooling_rate": 0.0}]  # same architecture: not counted
    (row,) = C.transfer_claims(rows, STUDY)
    assert row["verdict"] == f"{expected} (one seed)"
    assert row["effect"] == pytest.approx((on_dt - 0.5) / 0.5)
    assert C.transfer_claims([r for r in rows if r["source"].startswith("cnn")][:1], STUDY)[0]["verdict"] == "not measured"


@pytest.mark.parametrize("ratios, expected", [
    ({"pgd_at": 8.0, "dt_k5": 2.3, "single_head_k5": 1.01}, ("holds", "holds", "holds")),
    ({"pgd_at": 4.5, "dt_k5": 3.1, "single_head_k5": 1.1}, ("partly", "partly", "partly")),
    ({"pgd_at": 20.0, "dt_k5": 3.5, "single_head_k5": 1.5}, ("does not hold", "does not hold", "does not hold")),
    ({"dt_k5": 0.0}, ("inconclusive", "inconclusive", "inconclusive")),
])
def test_cost_claims_reach_each_verdict(ratios, expected):
    """C3-cost (a figure, within 25%), C4 (a bound, at most 10% over) and C5 (no overhead, within 5%)."""
    rows = C.cost_claims(ratios, STUDY)
    assert [r["claim"] for r in rows] == ["C3-cost", "C4", "C5"]
    assert tuple(r["verdict"].split(":")[0] for r in rows) == expected


def test_a_claim_whose_arms_attack_did_not_converge_is_inconclusive():
    rows = _rows(0.8, 0.15)
    k5 = ("dt_nodiv", "dt_literal", "dt_div", "dt_best")
    check = [{"arm": arm, "eval": ev, "converged": (arm, ev) != ("dt_best", "ensemble")}
             for arm in ARMS for ev in (("ensemble", "head0") if arm in k5 else ("head0",))]
    c = {r["claim"]: r for r in C.headline_claims(rows, STUDY, check=check)}
    assert c["C1"]["verdict"] == "inconclusive: attack not converged on dt_best"
    assert not c["C2"]["verdict"].startswith("inconclusive")  # clean accuracy needs no attack
    passed = {r["claim"]: r for r in C.headline_claims(rows, STUDY, check=[{**r, "converged": True} for r in check])}
    assert passed["C1"]["verdict"] == C.headline_claims(rows, STUDY)[0]["verdict"] == "holds"
    # C1 reads DT's ensemble: its single head failing the check does not touch it
    head_only = [{**r, "converged": (r["arm"], r["eval"]) != ("dt_best", "head0")} for r in check]
    assert C.headline_claims(rows, STUDY, check=head_only)[0]["verdict"] == "holds"
    # a check that left an arm out cannot vouch for it
    no_std = [r for r in check if r["arm"] != "standard"]
    assert C.headline_claims(rows, STUDY, check=no_std)[0]["verdict"] == \
        "inconclusive: attack not converged on dt_best and not checked on standard"


def test_k_cross_and_transfer_claims_are_inconclusive_where_their_attack_did_not_converge():
    """Every notebook's check gates its claims: C6 on the two K compared, C7 on DT and the stronger
    defense at the radius read (other radii and norms do not count), C8 on the sources used."""
    k_rows = [{"heads": k, "eval": "ensemble", "seed": 0, "fooling_rate": fr} for k, fr in ((2, 0.5), (10, 0.2))]
    k_check = [{"arm": f"K={k}", "heads": k, "eval": "ensemble", "converged": k != 10} for k in (2, 5, 10)]
    assert C.k_claims({2: {}, 10: {}}, k_rows, STUDY, k_check)[0]["verdict"] == "inconclusive: attack not converged on K=10"
    k_check[-1]["converged"] = True
    assert C.k_claims({2: {}, 10: {}}, k_rows, STUDY, k_check)[0]["verdict"] == "holds (one seed)"

    def cross_check(failed):
        return [{"arm": arm, "norm": norm, "radius": r, "eval": "ensemble", "converged": (arm, norm, r) != failed}
                for arm in ("dt_div", "uat", "pgd_at") for norm in ("linf", "l2") for r in (0.5, 1.0)]
    rows = _l2_rows(0.8, 0.3, 0.2)
    assert C.cross_claims(rows, STUDY, cross_check(("uat", "l2", 1.0)))[0]["verdict"] == \
        "inconclusive: attack not converged on uat"
    for harmless in (("pgd_at", "l2", 1.0), ("uat", "linf", 1.0), None):  # not the stronger defense; L-inf
        assert C.cross_claims(rows, STUDY, cross_check(harmless))[0]["verdict"] == "holds (one seed)"

    t_rows = [{"source": f"{src}/standard", "target": f"{bb}/{arm}", "fooling_rate": 0.5 if arm == "standard" else 0.1}
              for src, bb in (("vgg", "cnn"), ("cnn", "vgg")) for arm in ("standard", "dt_div")]
    t_check = [{"arm": m, "eval": "ensemble", "converged": m != "vgg/standard"}
               for m in ("cnn/standard", "cnn/dt_div", "vgg/standard", "vgg/dt_div")]
    assert C.transfer_claims(t_rows, STUDY, t_check)[0]["verdict"] == "inconclusive: attack not converged on vgg/standard"
    t_check[2]["converged"], t_check[3]["converged"] = True, False  # a target only: its own attack is not used
    assert C.transfer_claims(t_rows, STUDY, t_check)[0]["verdict"] == "holds (one seed)"
    t_check[0]["converged"] = False
    del t_check[2]  # a source with no check row: named beside the one that failed, as the gate names them
    assert C.transfer_claims(t_rows, STUDY, t_check)[0]["verdict"] == \
        "inconclusive: attack not converged on cnn/standard and not checked on vgg/standard"


def test_an_unconverged_defended_arm_cannot_rescue_a_claim_that_does_not_hold():
    """A fooling rate is a lower bound on the strongest UAP's, so where only the defended side's attack
    did not converge and the defense already does worse, a stronger attack could only fool it more:
    "does not hold" stands, marked. Where the reference's attack failed, or the verdict is not "does
    not hold", the row stays inconclusive (a stronger attack on the reference could widen the gap)."""
    k_rows = lambda lo, hi: [{"heads": k, "eval": "ensemble", "seed": 0, "fooling_rate": fr}
                             for k, fr in ((2, lo), (10, hi))]
    k_check = lambda failed: [{"arm": f"K={k}", "eval": "ensemble", "converged": k != failed} for k in (2, 10)]
    verdict = lambda lo, hi, failed: C.k_claims({2: {}, 10: {}}, k_rows(lo, hi), STUDY, k_check(failed))[0]["verdict"]
    assert verdict(0.36, 0.49, 10) == \
        "does not hold (one seed); attack not converged on K=10, which a stronger attack could only fool more"
    assert verdict(0.36, 0.49, 2) == "inconclusive: attack not converged on K=2"
    assert verdict(0.50, 0.20, 10) == "inconclusive: attack not converged on K=10"  # would hold: not vouched for
    assert verdict(0.36, 0.49, None) == "does not hold (one seed)"
    # the same rule on the headline: DT (chosen) fooled more than the standard model
    rows = _rows(0.3, 0.6)
    check = [{"arm": a, "eval": e, "converged": a != "dt_best"} for a in ARMS for e in ("head0", "ensemble")]
    assert C.headline_claims(rows, STUDY, check=check)[0]["verdict"] == \
        "does not hold; attack not converged on dt_best, which a stronger attack could only fool more"
    no_std = [r for r in check if r["arm"] != "standard"]  # the reference unchecked: nothing vouches for the gap
    assert C.headline_claims(rows, STUDY, check=no_std)[0]["verdict"] == \
        "inconclusive: attack not converged on dt_best and not checked on standard"
    assert S.gate(None, "holds", {"a": {}}, {"b": {}}) == "holds"  # no check run: the verdict as computed


def test_a_later_seeds_check_row_gates_the_claim_like_the_first_seeds():
    """The check also holds rows of later seeds (evaluations whose fits reached the cap): an arm's
    attack counts as converged only if every one of its rows passed, whatever the seed."""
    rows = _rows(0.6, 0.3)
    check = [{"arm": a, "eval": e, "seed": 0, "converged": True} for a in ARMS for e in ("head0", "ensemble")]
    held = C.headline_claims(rows, STUDY, check=check)[0]["verdict"]
    assert not held.startswith("inconclusive")
    later = [{"arm": "dt_best", "eval": e, "seed": 2, "converged": True} for e in ("head0", "ensemble")]
    assert C.headline_claims(rows, STUDY, check=check + later)[0]["verdict"] == held
    later[1]["converged"] = False
    assert C.headline_claims(rows, STUDY, check=check + later)[0]["verdict"] == "inconclusive: attack not converged on dt_best"


def test_claims_table_says_which_notebooks_an_earlier_attack_made():
    """The claims table names, per notebook, where and from which commit its results came, and marks
    every row of a notebook whose UAP numbers an earlier evaluation attack made (before the suite, or
    an earlier version of it), so a reader mixing regenerated and older results sees which is which;
    a timings-only notebook is never marked."""
    row = {"claim": "C1", "what": "w", "seed": "s", "measured": "m", "setting": "x", "verdict": "holds"}
    prov = lambda commit: {"device": "cpu (test)", "torch": "2.x", "git_commit": commit}
    run = {"r": {"train": {"provenance": prov("aaaa")}}}
    suite = {"config": {"uap_patience": 3}}
    new = {"notebook": "01_headline", "claims": [row], "study": suite, "runs": run, "provenance": prov("bbbb"),
           "attack_version": ATTACK_VERSION}
    v1 = {"notebook": "03_cross_norm", "claims": [row], "study": suite, "runs": run, "provenance": prov("dddd")}
    old = {"notebook": "02_k_ablation", "claims": [row], "study": {"config": {}}, "runs": run, "provenance": prov("cccc")}
    cost = {"notebook": "05_cost", "claims": [row], "study": {"config": {}}, "provenance": prov("bbbb")}
    assert [attack_version(r) for r in (new, v1, old, cost)] == [ATTACK_VERSION, 1, 0, ATTACK_VERSION]
    table = claims_table([new, old, v1, cost])
    assert "| 01_headline |" in table and f"| 02_k_ablation{PRE_SUITE} |" in table and "| 05_cost |" in table
    assert f"| 03_cross_norm{EARLIER_SUITE} |" in table
    assert "01_headline: run on cpu (test), torch 2.x, commit bbbb; models trained at aaaa." in table
    assert "02_k_ablation: run on cpu (test), torch 2.x, commit cccc; models trained at aaaa." in table
    last = table.splitlines()[-1]
    assert PRE_SUITE.strip() in last and EARLIER_SUITE.strip() in last
    assert last.index(PRE_SUITE.strip()) < last.index(EARLIER_SUITE.strip())
    assert PRE_SUITE.strip() not in claims_table([new, cost]) and "Rows marked" not in claims_table([new, cost])


def test_verdict_changes_compare_verdicts_not_their_reasons():
    """Between two profiles a claim changed only where the verdict itself did; a note or a different
    reason is no change, and a claim one profile lacks is shown, not compared."""
    claim = lambda c, v: {"claim": c, "what": f"what {c}", "verdict": v}
    study = [{"profile": "study", "claims": [claim("C1", "holds"), claim("C3", "does not hold (one seed)")]},
             {"profile": "study", "claims": [claim("C6", "inconclusive: attack not converged on K=10"),
                                             claim("C8", "partly"), claim("C7", "not measured")]}]
    cpu = [{"profile": "cpu", "claims": [claim("C1", "does not hold; attack not converged on dt_best, which a "
                                                      "stronger attack could only fool more"),
                                         claim("C3", "does not hold"), claim("C6", "inconclusive: not checked"),
                                         claim("C8", "does not hold"), claim("P1", "holds"),
                                         claim("C7", "not measured")]}]
    rows = [line.split(" | ") for line in verdict_changes(study, cpu).splitlines()[2:]]
    assert verdict_changes(study, cpu).splitlines()[0] == "| claim | what | verdict (study) | verdict (cpu) | changed |"
    assert [(r[0], r[-1]) for r in rows] == [("| C1", "**yes** |"), ("| C3", "no |"), ("| C6", "no |"),
                                             ("| C8", "**yes** |"), ("| C7", "no |"), ("| P1", "n/a |")]
    assert rows[-1][2] == "(not measured)" and rows[-1][3] == "holds"


def test_headline_markdown_shows_the_attack_check_with_its_verdict_per_model():
    row = {"arm": "dt_div", "eval": "ensemble", "fooling_rate": 0.40, "stronger_fooling_rate": 0.45, "uap_acc": 0.3,
           "stronger_uap_acc": 0.29, "n_fit": 5000, "stronger_n_fit": 8000, "converged": False,
           "stronger": {"uap_restarts": 2, "uap_tol": 0.0025}}
    table = check_table([row, {**row, "arm": "standard", "eval": "head0", "converged": True}])
    assert "| DT λdiv>0 | ensemble | 40.0 | 45.0 | 30.0 | 29.0 | 5000 / 8000 | **no** |" in table
    assert "| standard | head0 |" in table and table.count("| yes |") == 1
    assert "uap_restarts=2, uap_tol=0.0025" in table
    assert check_table([]) == "" == check_table([{"arm": "a", "fooling_rate": 0.1, "stronger_fooling_rate": 0.1}])


def _published_rows(asr, clean=None, seeds=(0, 1)):
    """06's rows: ``asr[(arm, attack, eps)]`` = the targeted attack success rate (seed spread 0.01)."""
    rows = []
    for (arm, attack, eps), rate in asr.items():
        for i, seed in enumerate(seeds):
            rows.append({"arm": arm, "attack": attack, "eps": eps, "target": STUDY.published_target, "eval": "head0",
                         "seed": seed, "asr": rate + 0.01 * (2 * i - 1)})
    for arm, acc in (clean or {}).items():
        rows += [{"arm": arm, "attack": "white-box", "eps": max(STUDY.published_radii), "target": -1,
                  "eval": "head0", "seed": s, "clean_acc": acc} for s in seeds]
    return rows


def test_published_claims_read_the_targeted_white_box_rows_at_every_radius():
    study = dataclasses.replace(STUDY, published_radii=(8 / 255, 10 / 255))
    arms = ("standard", "entropy_dt", "entropy_dt_published", "finetune_ctl")

    def rows(care8, care10, pub_t=0.5, pub=0.6, ctl=0.8):
        asr = {}
        for eps, care in ((8 / 255, care8), (10 / 255, care10)):
            asr |= {("standard", "white-box", eps): 0.8, ("entropy_dt", "white-box", eps): care,
                    ("entropy_dt_published", "white-box", eps): pub, ("entropy_dt", "standard's UAP", eps): 0.7,
                    ("entropy_dt_published", "standard's UAP", eps): pub_t, ("finetune_ctl", "white-box", eps): ctl}
        return _published_rows(asr, dict(zip(arms, (0.60, 0.595, 0.55, 0.62))))

    p = {c["claim"]: c for c in C.published_claims(rows(0.5, 0.5), study)}
    # P1 reads both implementations: its effect is the smaller fall, the one as published
    assert p["P1"]["verdict"] == "holds" and p["P1"]["effect"] == pytest.approx(0.2)
    assert "8/255: standard 80.0%" in p["P1"]["measured"] and "10/255" in p["P1"]["measured"]
    assert "as published 60.0%" in p["P1"]["measured"]
    assert p["P2"]["verdict"] == "holds" and p["P2"]["effect"] == pytest.approx(-0.005)  # a half-point drop
    assert p["P3"]["verdict"] == "holds" and p["P3"]["effect"] == pytest.approx(0.2)
    assert p["P4"]["verdict"] == "holds" and p["P4"]["effect"] == pytest.approx(0.3)
    assert "8/255: clean fine-tune 80.0%" in p["P4"]["measured"]
    # a radius where it does not lower the rate beyond noise (2 * sqrt(2) * 0.014 < 0.05 > 0.02) decides P1
    assert C.published_claims(rows(0.5, 0.78), study)[0]["verdict"] == "does not hold"
    assert C.published_claims(rows(0.5, 0.5, pub=0.79), study)[0]["verdict"] == "does not hold"  # as published alone
    assert C.published_claims(rows(0.5, 0.5, pub_t=0.69), study)[2]["verdict"] == "does not hold"
    # the same fine-tune on clean images lowers it as much: the samples do not, whatever P1 says
    p = {c["claim"]: c for c in C.published_claims(rows(0.5, 0.5, ctl=0.51), study)}
    assert p["P1"]["verdict"] == "holds" and p["P4"]["verdict"] == "does not hold"
    # a failed attack check on the arms P1 reads makes it inconclusive; a missing arm is named
    check = [{"arm": arm, "target": STUDY.published_target, "eval": "head0", "converged": arm != "entropy_dt"}
             for arm in ("standard", "entropy_dt", "entropy_dt_published", "finetune_ctl")]
    assert C.published_claims(rows(0.5, 0.5), study, check)[0]["verdict"] == "inconclusive: attack not converged on entropy_dt"
    assert C.published_claims(rows(0.5, 0.5), study, check)[3]["verdict"] == "inconclusive: attack not converged on entropy_dt"
    # ... unless it already does not hold: a stronger attack on entropy-DT could only raise its ASR
    assert C.published_claims(rows(0.5, 0.78), study, check)[0]["verdict"].startswith(
        "does not hold; attack not converged on entropy_dt")
    assert C.published_claims(rows(0.5, 0.78), study, check[1:])[0]["verdict"] == \
        "inconclusive: attack not converged on entropy_dt and not checked on standard"
    assert "entropy-DT" in C.published_claims([r for r in rows(0.5, 0.5) if r["arm"] != "entropy_dt"], study)[0]["verdict"]
