"""The study's rules: profiles and parameters, the verdict rules, claims computed from rows, and
the choice of DT's loss weights on the validation split."""
import math
from pathlib import Path

import pytest

from dtlib import study as S
from dtlib.experiment import RunResult


def test_verdict_rules():
    assert S.verdict(0.5, 0.8, 0.02) == "holds"        # at least half the seed's effect
    assert S.verdict(0.3, 0.8, 0.02) == "partly"       # real but under half
    assert S.verdict(0.01, 0.8, 0.02) == "does not hold"  # within noise
    assert S.verdict(-0.2, 0.8, 0.02) == "does not hold"  # the other way
    assert S.verdict(float("nan"), 0.8, 0.02) == "does not hold"
    assert S.cost_verdict(2.5, 2.3) == "holds" and S.cost_verdict(3.1, 2.3) == "partly"
    assert S.cost_verdict(3.5, 2.3) == "does not hold" and S.cost_verdict(1.0, 2.3) == "holds"
    assert S.figure_verdict(6.5, 8) == "holds" and S.figure_verdict(4.5, 8) == "partly"
    assert S.figure_verdict(20, 8) == "does not hold"
    assert S.overhead_verdict(1.01) == "holds" and S.overhead_verdict(1.5) == "does not hold"
    assert S.accuracy_cost_verdict(0.004) == "holds" and S.accuracy_cost_verdict(0.05) == "does not hold"
    one = S.claim("C9", "w", "s", "m", "set", "holds", n=1)
    assert one["verdict"] == "holds (one seed)"


def test_noise_is_twice_the_combined_spread_with_a_floor():
    a, b = S.mean_spread([0.5, 0.7]), S.mean_spread([0.1, 0.1])
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(math.sqrt(0.02))
    assert S.noise(a, b) == pytest.approx(2 * math.sqrt(0.02))
    assert S.noise(S.mean_spread([0.3]), S.mean_spread([0.4])) == S.MIN_NOISE
    assert S.fmt(S.mean_spread([0.5])) == "50.0% (n=1)"


def test_setup_applies_profile_and_overrides():
    st = S.setup("cpu", {"seeds": [0, 1, 2], "epochs": 2, "grid_adv": [0.0]})
    assert st.seeds == (0, 1, 2) and st.grid_adv == (0.0,) and st.config.epochs == 2
    assert st.config.train_size == S.PROFILES["cpu"]["config"]["train_size"]
    assert Path(st.config.data_dir).is_absolute() and Path(st.config.data_dir).name == "data"
    assert S.setup("smoke").config.data == "mini"


@pytest.mark.parametrize("profile, overrides, needle", [
    ("tiny", {}, "'tiny'"),
    ("smoke", {"epochz": 3}, "'epochz'"),
    ("smoke", {"heads": 0}, "heads (K)"),
    ("smoke", {"ablation_seeds": 2}, "ablation_seeds=2"),
    ("smoke", {"grid_div": [0.0]}, "grid_div=[0.0] needs a value above 0"),
])
def test_setup_rejects_bad_parameters_in_one_sentence(profile, overrides, needle):
    with pytest.raises(ValueError) as e:
        S.setup(profile, overrides)
    msg = str(e.value)
    assert needle in msg and msg.count(". ") == 0 and "\n" not in msg


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


def test_dt_weights_are_chosen_on_the_validation_split(monkeypatch):
    """select_dt scores every grid cell on eval_split='val' and keeps the best validation accuracy
    under the UAP; the test split is never asked for."""
    calls = []
    val_acc = {(0.0, 0.0): 0.30, (1.0, 0.0): 0.20, (0.0, 1.0): 0.25, (1.0, 1.0): 0.45}

    def fake_run(self, log=print, **o):
        calls.append(o)
        cfg = self.config.replace(**o)
        acc = val_acc.get((cfg.lambda_div, cfg.lambda_adv), 0.1) if cfg.method == "dt" else 0.1
        key = "ensemble" if cfg.heads > 1 else "head0"
        m = {"eval": {key: {"clean_acc": 0.8, "fooling_rate": 0.5, "uap_acc": acc}},
             "train": {}, "provenance": {}}
        return RunResult(cfg, Path("runs") / "x", m)

    monkeypatch.setattr(S.Study, "run", fake_run)
    st = S.setup("smoke", {"grid_div": [0.0, 1.0], "grid_adv": [0.0, 1.0]})
    sel = S.select_dt(st, log=lambda s: None)
    assert sel["best"] == {"lambda_div": 1.0, "lambda_adv": 1.0} == sel["best_div"]
    val_acc[(0.0, 1.0)] = 0.9  # now the best cell has no diversity term; the best with one is kept apart
    sel = S.select_dt(st, log=lambda s: None)
    assert sel["best"] == {"lambda_div": 0.0, "lambda_adv": 1.0}
    assert sel["best_div"] == {"lambda_div": 1.0, "lambda_adv": 1.0}
    a = S.arms(sel)
    assert a["dt_nodiv"]["lambda_adv"] == a["dt_div"]["lambda_adv"] == a["dt_k1"]["lambda_adv"] == 1.0
    assert calls and all(c["eval_split"] == "val" for c in calls)
    assert {c["method"] for c in calls} == {"dt", "standard", "uat"}
