"""The study's rules: profiles and parameters, the verdict rules, claims computed from rows, and
the choice of DT's loss weights on the validation split."""
import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dtlib import Config, study as S, tables
from dtlib.config import FIELD_TYPES
from dtlib.study import check, experiments, fill, published, settings
from dtlib.data import Split
from dtlib.experiment import RunResult

pytestmark = pytest.mark.precision  # the study under the precision CI also forces; cheap (fakes and rules)


def test_setup_applies_profile_and_overrides():
    st = S.setup("cpu", {"seeds": [0, 1, 2], "epochs": 2, "grid_adv": [0.0]})
    assert st.seeds == (0, 1, 2) and st.grid_adv == (0.0,) and st.config.epochs == 2
    assert st.config.train_size == S.PROFILES["cpu"]["config"]["train_size"]
    assert st.config.data_dir == "data"  # kept as given: results never carry this machine's paths
    assert S.setup("smoke", {"data_dir": "/elsewhere/cifar"}).config.data_dir == "/elsewhere/cifar"
    gpu = S.setup("gpu", {"eval_eps": "8/255"})
    assert gpu.backbone == gpu.config.backbone == "resnet18"
    assert gpu.eval_eps == gpu.config.eval_eps == pytest.approx(8 / 255)
    assert S.setup("smoke").config.data == "mini"
    # text, as from the command line (python -m dtlib study cpu seeds=0,1,2) or papermill -p, is parsed
    # by the one key=value parser of Config, Study and the benchmark
    text = S.setup("smoke", {"seeds": "0,1,2", "ablation_seeds": "2", "l2_radii": "0.5,1", "transfer_backbones": "cnn,vgg"})
    assert (text.seeds, text.ablation_seeds, text.l2_radii, text.transfer_backbones) == ((0, 1, 2), 2, (0.5, 1.0),
                                                                                          ("cnn", "vgg"))


PER_RUN_CONTROLS = {"method": "arms", "heads": "ks", "lambda_div": "grid_div", "lambda_adv": "grid_adv", "seed": "seeds",
                    "eval_norm": "l2_radii", "eval_modes": "experiment", "eval_split": "experiment", "eval_head": "head 0",
                    "eval_target": "published_target", "ent_clamp": "06", "ent_bn": "06", "ent_leak": "06", "ent_alpha": "06",
                    "uap_objective": "grid_attacker", "uap_every": "grid_attacker", "uap_fraction": "grid_attacker",
                    "perturbed_fraction": "grid_attacker",
                    "pretrained": "random weights"}


def test_every_field_set_per_run_has_its_controller_named():
    assert set(PER_RUN_CONTROLS) == set(S.PER_RUN)
    assert not set(S.PER_RUN) & S.STUDY_FIELDS
    assert set(S.SHARED_FIELDS) <= S.STUDY_FIELDS & set(FIELD_TYPES)


@pytest.mark.parametrize("profile, overrides, needle", [
    ("tiny", {}, "'tiny'"),
    ("smoke", {"epochz": 3}, "'epochz'"),
    ("smoke", {"ks": [1, 0]}, "ks holds 0: heads (K)"),
    ("smoke", {"ablation_seeds": 2}, "ablation_seeds=2"),
    ("smoke", {"k_seeds": 2}, "k_seeds=2 must be between 1 and the number of seeds, 1 ([0])"),
    ("study", {"seeds": [0]}, "k_seeds=3 must be between 1 and the number of seeds, 1 ([0]); with fewer seeds, set k_seeds too."),
    ("smoke", {"grid_div": [0.0]}, "grid_div=[0.0] needs a value above 0"),
    ("smoke", {"backbone": "resnet18"}, "must include the study's backbone 'resnet18'"),
    ("smoke", {"seeds": [0, 0]}, "seeds=[0, 0] holds a value twice"),
    ("smoke", {"ks": [5.0]}, "ks=(5.0,) must be a list of integers"),
    ("smoke", {"seeds": "0,x"}, "Study field seeds='0,x' is not a comma-separated list of integers"),
    ("smoke", {"bench_steps": 1.5}, "bench_steps=1.5 must be an integer"),
    ("smoke", {"val_size": 0}, "The selection grid scores on the validation split: eval_split='val'"),
    ("smoke", {"grid_attacker": ["loss", "loss"]}, "grid_attacker=['loss', 'loss'] holds a value twice"),
    ("smoke", {"grid_attacker": []}, "grid_attacker is empty"),
    ("smoke", {"grid_attacker": ["ensemble_ce/x"]}, "grid_attacker holds 'ensemble_ce/x': write uap_objective"),
    ("smoke", {"grid_attacker": ["loss/0"]}, "grid_attacker holds 'loss/0': uap_every must be at least 1"),
    ("smoke", {"grid_attacker": ["loss/"]}, "grid_attacker holds 'loss/': write uap_objective"),
    ("smoke", {"grid_attacker": ["ensemble_ce", "ensemble_ce/1"]}, "names one setting twice"),
    ("smoke", {"grid_attacker": ["ensemble_ce", "ensemble_ce@1"]}, "names one setting twice"),
    ("smoke", {"grid_attacker": ["ensemble_ce@1.5"]}, "uap_fraction must be a fraction in (0, 1]"),
    ("smoke", {"grid_attacker": ["loss@0.5"]}, "uap_fraction=0.5 sets ensemble_ce's gradient pass"),
    ("smoke", {"grid_attacker": ["ensemble_ce@1.2.3"]}, "whose @1.2.3 is not a number"),
    ("smoke", {"grid_attacker": ["loss+1.5"]}, "perturbed_fraction must be a fraction in (0, 1]"),
    ("smoke", {"grid_attacker": ["loss+0..5"]}, "whose +0..5 is not a number"),
    ("smoke", {"grid_attacker": ["loss", "loss+1"]}, "names one setting twice"),
    *[("smoke", {name: getattr(Config(), name)}, f"Config field {name!r} is set run by run by the study")
      for name in S.PER_RUN],
])
def test_setup_rejects_bad_parameters_in_one_sentence(profile, overrides, needle):
    with pytest.raises(ValueError) as e:
        S.setup(profile, overrides)
    msg = str(e.value)
    assert needle in msg and msg.count(". ") == 0 and "\n" not in msg
    name = next(iter(overrides), "")
    if name in S.PER_RUN:  # the refusal names what controls the field instead
        assert PER_RUN_CONTROLS[name] in msg


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


def test_dts_training_time_attackers_are_scored_beside_the_one_it_trains_with(monkeypatch):
    """grid_attacker: the first setting trains every DT run (grid and arms); each other one trains
    DT at the chosen cell with the diversity term, scored on validation as the grid is, and is
    marked no_worse when its accuracy under UAP reaches the first one's less its seed spread."""
    acc = {("ensemble_ce", 1): [0.40, 0.44], ("loss", 1): [0.30, 0.34], ("ensemble_ce", 4): [0.36, 0.38]}
    calls = []

    def fake_run(self, log=print, **o):
        calls.append(o)
        cfg = self.config.replace(**o)
        a = acc.get((cfg.uap_objective, cfg.uap_every), [0.1, 0.1])[cfg.seed] if cfg.method == "dt" and cfg.lambda_div else 0.1
        key = "ensemble" if cfg.heads > 1 else "head0"
        return RunResult(cfg, Path("runs") / "x", {"eval": {key: {"clean_acc": 0.8, "fooling_rate": 0.5, "uap_acc": a}},
                                                   "train": {}, "provenance": {}})

    monkeypatch.setattr(S.Study, "run", fake_run)
    st = S.setup("smoke", {"seeds": [0, 1], "ablation_seeds": 2, "grid_attacker": ["ensemble_ce", "loss", "ensemble_ce/4"]})
    sel = S.select_dt(st, log=lambda s: None)
    rows = {r["attacker"]: r for r in sel["attackers"]}
    assert rows["ensemble_ce"]["val_uap_acc"] == pytest.approx(0.42)
    assert rows["ensemble_ce"]["val_uap_acc_sd"] == pytest.approx(statistics.stdev([0.40, 0.44]))
    # no worse: within twice the combined seed spread (sd 0.028 and 0.014: 0.063) of the first's 0.42
    assert [rows[n]["no_worse"] for n in ("ensemble_ce", "loss", "ensemble_ce/4")] == [True, False, True]
    assert rows["loss"]["val_uap_acc"] < 0.42 - 0.063 < rows["ensemble_ce/4"]["val_uap_acc"]
    assert sel["attacker"] == {"uap_objective": "ensemble_ce", "uap_every": 1, "uap_fraction": 1.0, "perturbed_fraction": 1.0}
    grid = [c for c in calls if c.get("uap_every") == 4 or c.get("uap_objective") == "loss"]
    assert len(grid) == 4 and all(c["heads"] == 5 and c["lambda_div"] == 1.0 and c["eval_split"] == "val" for c in grid)
    # the first setting is what every DT arm trains with, where the summary's step is not better by
    # more than the noise (one seed: 2 points) ...
    st = S.setup("smoke", {"grid_attacker": ["ensemble_ce/4", "ensemble_ce"]})
    acc[("ensemble_ce", 4)] = [0.385]
    sel = S.select_dt(st, log=lambda s: None)
    assert all(o["uap_every"] == 4 for name, o in S.arms(sel).items() if o["method"] == "dt")
    # ... and the summary's step where it is (0.40 against 0.36)
    acc[("ensemble_ce", 4)] = [0.36]
    sel = S.select_dt(st, log=lambda s: None)
    assert sel["step"] == "ensemble_ce"
    assert all(o["uap_every"] == 1 for name, o in S.arms(sel).items() if o["method"] == "dt")


# A value other than the smoke profile's for every Config field a study accepts in overrides.
ACCEPTED = {"lambda_cons": 0.5, "norm": "l2", "eps": 0.5, "uap_step": 0.05, "pgd_eps": 4 / 255,
            "pgd_steps": 3, "pgd_alpha": 1 / 255, "epochs": 2, "batch_size": 32, "lr": 0.05, "weight_decay": 1e-4,
            "warmup": 0.1, "data": "full", "train_size": 300, "val_size": 80, "precision": "fp32", "eval_size": 150,
            "uap_fit_size": 96, "uap_epochs": 2, "uap_lr": "0.3", "uap_decay": 0.9, "uap_restarts": 2, "uap_refine": 2,
            "uap_window": 5, "uap_tol": 0.01, "uap_patience": 2, "eval_objectives": "heads_ce", "eval_labels": "true",
            "device": "auto", "checkpointing": True, "compile": True, "deterministic": True,
            "checkpoint_minutes": 5.0, "data_dir": "elsewhere", "download": True, "repair_size": 50,
            "repair_epochs": 2, "repair_clean_epochs": 2, "repair_batch_size": 16, "repair_lr": 0.01,
            "repair_clean_lr": 1e-4, "repair_rotation": 5.0, "ent_steps": 3, "ent_step": 0.5,
            "uap_adam_lr": 0.01, "nproc": 2, "sync_bn": True, "image_size": 64, "workers": 2}


def test_the_value_table_covers_every_accepted_config_field():
    accepted = set(FIELD_TYPES) - set(S.PER_RUN) - S.STUDY_FIELDS
    assert set(ACCEPTED) == accepted
    smoke = S.setup("smoke").config
    assert all(getattr(smoke, k) != v for k, v in ACCEPTED.items())


def _fake_runs(monkeypatch):
    """Study.run, the data, the model loading and the timings replaced by stand-ins, so the six
    experiments run in a second and record the configs they would have trained."""
    def fake_run(self, log=print, **o):
        cfg = self.config.replace(**o)
        keys = dict.fromkeys("ensemble" if m == "ensemble" and cfg.heads > 1 else f"head{cfg.eval_head}" for m in cfg.modes)
        m = {k: {"clean_acc": 0.8, "fooling_rate": 0.5, "uap_acc": 0.4, "random_fooling_rate": 0.1,
                 "fooling_by": "sgd:ce/predicted/lr0.1", "uap_acc_by": "sgd:ce/true/lr0.1",
                 "n_fit": cfg.uap_fit_size, **({"targeted_success": 0.3} if cfg.eval_target >= 0 else {})} for k in keys}
        return RunResult(cfg, Path("runs") / cfg.train_hash(), {"eval": m, "train": {"wall_s": 1.0}, "provenance": {}})

    def timings(study, cases, **kw):
        assert all(set(o) <= set(S.PER_RUN) | {"mode"} for o in cases.values()), cases
        return {k: {"median_s": 0.1, "ratio": 1.0, "ratio_quartiles": [1.0, 1.0], "memory": {"peak_mb": 1.0}}
                for k in cases}

    images = Split(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8), torch.arange(100) % 10)
    model = SimpleNamespace(scores=lambda x, mode: x.flatten(1)[:, :10].float())
    monkeypatch.setattr(S.Study, "run", fake_run)
    monkeypatch.setattr(experiments, "time_training_steps", timings)
    monkeypatch.setattr(experiments, "inference_latency", lambda cfg, cases, **kw: timings(None, cases))
    monkeypatch.setattr(experiments, "load_data", lambda cfg: (images, images, images))
    monkeypatch.setattr(experiments, "load_model", lambda run_dir, device: (model, Config()))
    monkeypatch.setattr(experiments, "load_uaps", lambda run_dir, cfg, device: {"ensemble": torch.zeros(1, 3, 32, 32),
                                                                       "head0": torch.zeros(1, 3, 32, 32)})
    uaps = {f"{k}{part}": torch.zeros(1, 3, 32, 32) for k in ("ensemble", "head0") for part in ("", "/uap_acc", "/targeted")}
    monkeypatch.setattr(published, "load_uaps", lambda run_dir, cfg, device="cpu": uaps)
    monkeypatch.setattr(published, "uap_metrics", lambda res, sets, target: [{
        k: {"clean_acc": 0.8, "fooling_rate": 0.5, "uap_acc": 0.4, "asr": 0.5,
            "targeted_success": 0.3 if target >= 0 else None} for k in res.metrics["eval"]} for _ in sets])


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_an_accepted_config_field_reaches_every_run_the_study_records(name, monkeypatch, tmp_path):
    """What `overrides` may name takes effect: each run in every results JSON has the given value
    (fields the experiments set per run are refused by setup instead)."""
    _fake_runs(monkeypatch)
    overrides = {name: ACCEPTED[name], **({"checkpointing": False} if name == "compile" else {}),
                 **({"nproc": 2, "device": "auto"} if name == "sync_bn" else {}),  # SyncBatchNorm: processes, not on "cpu"
                 **({"data": "imagenet", "transfer_backbones": ["cnn", "resnet50"]} if name in ("image_size", "workers")
                    else {})}  # an ImageFolder's alone (vgg takes 32 x 32 images only)
    study = S.setup("smoke", overrides, root=str(tmp_path))
    want = getattr(study.config, name)
    for notebook, experiment in S.EXPERIMENTS.items():
        experiment(study, log=lambda s: None)
        res = json.loads((tmp_path / "results" / f"{notebook}-smoke.json").read_text())
        assert res["study"]["config"][name] == want
        for run in res.get("runs", {}).values():
            assert run["config"][name] == want, (notebook, run["config"])


def test_training_bars_are_widgets_in_jupyterlab_and_text_under_papermill():
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})  # the class name IPython's kernel shell has
    kernel = ZMQInteractiveShell()
    kernel.user_ns = {"In": ["", "profile = 'cpu'"]}
    assert S.bars_for(kernel) == "auto"  # tqdm.auto: a widget in a Jupyter kernel
    kernel.user_ns["In"].append("# Parameters\nprofile = \"smoke\"\n")
    assert S.bars_for(kernel) == "text"
    assert S.bars_for(SimpleNamespace(user_ns={})) == "auto"  # a terminal IPython or plain Python
    assert S.setup("smoke", progress="off").progress == "off" == S.setup("smoke", progress=False).progress
    with pytest.raises(ValueError, match="progress='loud' is not one of auto, text, off"):
        S.setup("smoke", progress="loud")


def test_transferred_uaps_never_beat_a_models_reported_numbers():
    """04: the other models' UAPs are candidates of each model's suite, so what is reported for a
    model is at least every transferred UAP's fooling rate on it, and at most its accuracy."""
    own = {"a": {"fooling_rate": 0.3, "fooling_by": "sgd:x", "uap_acc": 0.5, "uap_acc_by": "sgd:y"},
           "b": {"fooling_rate": 0.6, "fooling_by": "sgd:x", "uap_acc": 0.2, "uap_acc_by": "pattern:z"}}
    rows = [{"source": s, "target": t, "fooling_rate": fr, "uap_acc": acc}
            for s, t, fr, acc in (("a", "a", 0.3, 0.55), ("b", "a", 0.45, 0.52), ("a", "b", 0.4, 0.1), ("b", "b", 0.6, 0.3))]
    rep = {r["target"]: r for r in experiments.reported(rows, own)}
    assert (rep["a"]["fooling_rate"], rep["a"]["fooling_by"]) == (0.45, "transfer:b")
    assert (rep["a"]["uap_acc"], rep["a"]["uap_acc_by"]) == (0.5, "sgd:y")
    assert (rep["b"]["fooling_rate"], rep["b"]["fooling_by"]) == (0.6, "sgd:x")
    assert (rep["b"]["uap_acc"], rep["b"]["uap_acc_by"]) == (0.1, "transfer:a")
    for r in rows:
        assert rep[r["target"]]["fooling_rate"] >= r["fooling_rate"] and rep[r["target"]]["uap_acc"] <= r["uap_acc"]
    # ... and a transfer that beats a model's own suite by more than the noise margin marks that
    # model's attack as not converged (its suite missed a direction another model found)
    check = [{"arm": t, "eval": "head0", "fooling_rate": own[t]["fooling_rate"], "uap_acc": own[t]["uap_acc"],
              "converged": True} for t in own]
    marked = {c["arm"]: c for c in experiments.beaten_by_transfer(check, rows, {"a": "head0", "b": "head0"})}
    assert (marked["a"]["converged"], marked["a"]["beaten_by_transfer"]) == (False, ["b"])  # 0.45 > 0.3 + 0.02
    assert (marked["b"]["converged"], marked["b"]["beaten_by_transfer"]) == (False, ["a"])  # accuracy 0.1 < 0.2 - 0.02
    within = [{**r, "fooling_rate": min(r["fooling_rate"], own[r["target"]]["fooling_rate"] + 0.01),
               "uap_acc": max(r["uap_acc"], own[r["target"]]["uap_acc"])} for r in rows]
    assert all(c["converged"] for c in experiments.beaten_by_transfer(check, within, {"a": "head0", "b": "head0"}))


def test_cross_norm_reads_the_headlines_evaluation_at_its_radius(monkeypatch, tmp_path):
    """03's L-inf point at the study's eval_eps asks the run cache for exactly the evaluations (base
    and stronger) the headline made, so nothing is fitted twice; its other points score the
    ensemble only, and its check keeps one row per point, for the mode that point reports."""
    _fake_runs(monkeypatch)
    fake, asked = S.Study.run, {}

    def record(self, log=print, **o):
        res = fake(self, log, **o)
        asked.setdefault(current, []).append(res.config)
        return res

    monkeypatch.setattr(S.Study, "run", record)
    study = S.setup("smoke", {"linf_radii": [4 / 255, 10 / 255], "l2_radii": [1.0]}, root=str(tmp_path))
    results = {}
    for current in ("01_headline", "03_cross_norm"):
        results[current] = S.EXPERIMENTS[current](study, log=lambda s: None)
    key = lambda c: (c.train_hash(), c.eval_hash())
    headline = {key(c) for c in asked["01_headline"]}
    shared = [c for c in asked["03_cross_norm"] if c.eval_split == "test" and c.eval_norm == "linf"
              and c.eval_eps == study.eval_eps]
    assert shared and all(key(c) in headline for c in shared)
    others = [c for c in asked["03_cross_norm"] if c.eval_split == "test" and c not in shared]
    assert others and all(c.modes == ["ensemble"] and key(c) not in headline for c in others)
    check = results["03_cross_norm"]["attack_check"]
    assert len(check) == len({(c["arm"], c["norm"], c["radius"]) for c in check})
    assert {c["eval"] for c in check if c["arm"] == "dt_div"} == {"ensemble"}
    assert {c["eval"] for c in check if c["arm"] == "standard"} == {"head0"}


def test_the_published_table_counts_every_seed_in_each_row(monkeypatch, tmp_path):
    """06's table: n is the number of seeds in every row, untargeted rows included (their targeted
    success is None, not a metric with fewer values), and no other metric has a count of its own."""
    _fake_runs(monkeypatch)
    study = S.setup("smoke", {"seeds": [0, 1]}, root=str(tmp_path))
    table = published.published_method(study, log=lambda s: None)["table"]
    assert {r["target"] < 0 for r in table} == {True, False}
    for r in table:
        assert r["n"] == 2 and not [k for k in r if k.endswith("_n")], r
        assert (r["targeted_success"] is None) == (r["target"] < 0)


def test_a_cheaper_step_trains_the_arms_unless_the_summarys_step_beats_it_beyond_the_noise(monkeypatch):
    """chosen_step: loss+0.5 (first) stands unless ensemble_ce, the summary's step, is better by more
    than twice the combined seed spread (at least 2 points) on the seeds after the grid's; attacker_seeds
    widens the comparison (not the grid) to the first n seeds, and the arms take the chosen step."""
    row = lambda name, *accs: {"attacker": name, "val_uap_acc_by_seed": list(accs)}
    assert S.chosen_step([row("loss+0.5", 0.40), row("ensemble_ce", 0.419)]) == "loss+0.5"
    assert S.chosen_step([row("loss+0.5", 0.40), row("ensemble_ce", 0.421)]) == "ensemble_ce"
    # spreads 0.03 and 0.04 (values +-0.0212, +-0.0283): noise 2 * 0.05 = 0.10
    d3, d4 = 0.03 / 2 ** 0.5, 0.04 / 2 ** 0.5
    assert S.chosen_step([row("loss+0.5", 0.40 - d3, 0.40 + d3), row("ensemble_ce", 0.49 - d4, 0.49 + d4)]) == "loss+0.5"
    assert S.chosen_step([row("loss+0.5", 0.40 - d3, 0.40 + d3), row("ensemble_ce", 0.51 - d4, 0.51 + d4)]) == "ensemble_ce"
    # skip: the grid's seed (where the first is the grid's best cell) is not read
    assert S.chosen_step([row("loss+0.5", 0.60, 0.40), row("ensemble_ce", 0.45, 0.45)], skip=1) == "ensemble_ce"
    # the summary's step under another spelling is the same setting; without it the first stands
    assert S.chosen_step([row("loss+0.5", 0.40), row("ensemble_ce/1", 0.45)]) == "ensemble_ce/1"
    assert S.chosen_step([row("loss+0.5", 0.40), row("ensemble_ce/4", 0.45)]) == "loss+0.5"
    # only the summary's step can displace the first: a better cheaper one is reported, not taken
    assert S.chosen_step([row("ensemble_ce", 0.30), row("ensemble_ce/4", 0.50)]) == "ensemble_ce"
    calls = []

    def fake_run(self, log=print, **o):
        calls.append(o)
        cfg = self.config.replace(**o)
        a = {("ensemble_ce", 1.0): [0.45, 0.47], ("loss", 0.5): [0.48, 0.41]}.get(
            (cfg.uap_objective, cfg.perturbed_fraction), [0.1, 0.1])[cfg.seed] if cfg.method == "dt" and cfg.lambda_div else 0.1
        key = "ensemble" if cfg.heads > 1 else "head0"
        return RunResult(cfg, Path("runs") / "x", {"eval": {key: {"clean_acc": 0.8, "fooling_rate": 0.5, "uap_acc": a}},
                                                   "train": {}, "provenance": {}})

    monkeypatch.setattr(S.Study, "run", fake_run)
    said = []
    st = S.setup("smoke", {"seeds": [0, 1], "attacker_seeds": 2, "grid_attacker": ["loss+0.5", "ensemble_ce"]})
    sel = S.select_dt(st, log=said.append)
    assert [r["val_uap_acc_by_seed"] for r in sel["attackers"]] == [[0.48, 0.41], [0.45, 0.47]]
    assert {c["seed"] for c in calls if c.get("lambda_div") == 0.0} == {0}  # the grid stays at ablation_seeds
    # over both seeds loss+0.5 is no worse (0.445 against 0.46), on seed 1 alone it is (0.41 against 0.47)
    assert sel["attackers"][0]["no_worse"] and sel["step_seeds"] == [1]
    assert sel["step"] == "ensemble_ce" and sel["attacker"]["perturbed_fraction"] == 1.0
    assert any("DT trains with ensemble_ce" in s for s in said)
    assert all(o["uap_objective"] == "ensemble_ce" and o["perturbed_fraction"] == 1.0
               for o in S.arms(sel).values() if o["method"] == "dt")
    for bad, needle in (({"attacker_seeds": 3}, "attacker_seeds=3 must be 0"), ({"attacker_seeds": 1}, "attacker_seeds=1 must be 0"),
                        ({"attacker_seeds": 2, "grid_attacker": ["loss+0.5"]}, "grid_attacker=['loss+0.5'] has one")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            S.setup("smoke", {"seeds": [0, 1], "grid_attacker": ["loss+0.5", "ensemble_ce"], **bad})


def test_the_standard_models_uaps_moved_to_an_arm_count_at_the_attackers_best_metric_by_metric():
    fool = {"clean_acc": 0.6, "fooling_rate": 0.5, "uap_acc": 0.35, "asr": 0.45, "targeted_success": None}
    acc = {"clean_acc": 0.6, "fooling_rate": 0.4, "uap_acc": 0.3, "asr": 0.5, "targeted_success": None}
    assert published.best_of([fool, acc]) == {"clean_acc": 0.6, "fooling_rate": 0.5, "uap_acc": 0.3, "asr": 0.5,
                                              "targeted_success": None}
    assert published.best_of([{**fool, "targeted_success": 0.2}])["targeted_success"] == 0.2


def test_the_fill_plan_reads_a_half_done_targeted_attack_check(monkeypatch, tmp_path):
    """06's check of a targeted evaluation that is cached while its stronger suite is not: the plan's
    stand-in carries a targeted rate to compare with the cached one (it stopped `make fill` before)."""
    study = S.setup("smoke", root=str(tmp_path))

    def done(where, cfg):  # the metrics of a finished evaluation, one entry per inference mode
        path = tmp_path / f"{where.name}-{cfg.eval_hash()}.json"
        keys = {"ensemble" if m == "ensemble" and cfg.heads > 1 else "head0" for m in cfg.modes}
        path.write_text(json.dumps({"eval": {k: {**fill.PLACEHOLDER, "n_fit": 1, "targeted_success": 0.2} for k in keys},
                                    "train": {"wall_s": 1.0}, "provenance": {}}))
        return path

    refine = study.config.uap_refine
    monkeypatch.setattr(fill, "cached", lambda cfg, runs: cfg.eval_target >= 0 and cfg.uap_refine == refine)
    monkeypatch.setattr(fill, "metrics_path", done)
    planned = fill.plan(study, ["06_published_method"])
    assert [c for c in planned if c.eval_target >= 0 and c.uap_refine > refine]


def test_the_fill_plan_is_what_the_experiments_ask_for(monkeypatch, tmp_path):
    """``fill.plan`` runs each experiment against stand-ins: it lists exactly the (run, evaluation)
    pairs the experiments then ask Study.run for, and trains, evaluates and writes nothing."""
    _fake_runs(monkeypatch)
    fake, asked = S.Study.run, set()

    def record(self, log=print, **o):
        res = fake(self, log, **o)
        asked.add((res.config.train_hash(), res.config.eval_hash()))
        return res

    study = S.setup("smoke", {"l2_radii": [0.5, 1.0]}, root=str(tmp_path))
    planned = fill.plan(study, list(S.NOTEBOOKS))
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(S.Study, "run", record)
    for experiment in S.EXPERIMENTS.values():
        experiment(study, log=lambda s: None)
    assert {(c.train_hash(), c.eval_hash()) for c in planned} == asked
    assert len(planned) == len(asked)  # each once


def test_the_study_profile_trains_every_headline_arm_and_each_k_over_three_seeds(tmp_path):
    """`study`: the full training set less a 5,000-image validation split, the whole test set scored;
    the selection grid on the first seed; the attackers' comparison, every headline arm and every K
    of the ablation on all three."""
    st = S.setup("study", root=str(tmp_path))
    c = st.config
    assert (c.data, c.train_size, c.val_size, c.eval_size, c.precision, c.device) == ("full", 0, 5000, 10000, "fp32", "cpu")
    planned = fill.plan(st, ["01_headline", "02_k_ablation", "06_published_method"])
    assert not any(tmp_path.iterdir())
    seeds = lambda pick: {p.seed for p in planned if p.eval_split == "test" and pick(p)}
    # the grid (and its standard and UAT references) on seed 0; the attackers' comparison on all three
    val = [p for p in planned if p.eval_split == "val"]
    assert {p.seed for p in val if p.method != "dt" or p.lambda_div != 1.0 or p.lambda_adv != 0.0} == {0}
    assert {(p.uap_objective, p.perturbed_fraction, p.seed) for p in val if p.method == "dt" and p.lambda_div == 1.0
            and p.lambda_adv == 0.0} == {(o, f, s) for o, f in (("loss", 0.5), ("ensemble_ce", 1.0)) for s in (0, 1, 2)}
    for method in ("standard", "uat", "pgd_at"):
        assert seeds(lambda p: p.method == method) == {0, 1, 2}
    for k in st.ks:
        assert seeds(lambda p: p.method == "dt" and p.heads == k) == {0, 1, 2}
    # DT with and without the diversity term (the grid's choices stand in for each other before it is scored)
    assert seeds(lambda p: p.method == "dt" and p.heads == 5 and p.lambda_div > 0) == {0, 1, 2}
    assert seeds(lambda p: p.method == "dt" and p.heads == 5 and p.lambda_div == 0) == {0, 1, 2}
    for clamp in (True, False):  # entropy-DT careful, and as published
        assert seeds(lambda p: p.method == "entropy_dt" and p.ent_clamp == clamp) == {0, 1, 2}
    # the cpu quick look keeps its one seed for the K ablation
    quick = fill.plan(S.setup("cpu", root=str(tmp_path)), ["02_k_ablation"])
    assert {p.seed for p in quick if p.method == "dt" and p.heads == 10} == {0}


@pytest.mark.parametrize("argv, needle", [(["smoke", "09_nope"], "unknown notebook '09_nope'"),
                                          (["smoke", "--lanes", "0"], "--lanes 0 must be at least 1"),
                                          (["nope"], "Unknown profile 'nope'"),
                                          (["smoke", "--overrides", '{"seedz": [1]}'], "Unknown parameter 'seedz'")])
def test_fill_refuses_bad_arguments_in_one_sentence(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit):
        fill.main([*argv, "--root", str(tmp_path)])
    assert needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_attack_check_also_takes_a_later_seeds_evaluation_whose_fits_reached_the_cap(monkeypatch, tmp_path):
    """The check attacks every arm of the first seed again; of a later seed (or 06's other
    settings) only the evaluations whose suite had a fit stopped by its cap rather than by its
    stopping rule (UAT seed 1 here), and its rows carry the seed and both suites' fit status."""
    _fake_runs(monkeypatch)
    fake, asked = S.Study.run, []

    def run(self, log=print, **o):
        res = fake(self, log, **o)
        asked.append(res.config)
        for m in res.metrics["eval"].values():
            m["converged"] = not (res.config.method == "uat" and res.config.seed == 1 and "uap_refine" not in o)
        return res

    monkeypatch.setattr(S.Study, "run", run)
    study = S.setup("smoke", {"seeds": [0, 1]}, root=str(tmp_path))
    refine = check.stronger(study.config)["uap_refine"]
    quiet = lambda s: None
    res = experiments.headline(study, log=quiet)
    checked = {(c["arm"], c["seed"]) for c in res["attack_check"]}
    assert {a for a, s in checked if s == 0} == set(S.arms(res["selection"])) and {a for a, s in checked if s == 1} == {"uat"}
    uat1 = next(c for c in res["attack_check"] if c["seed"] == 1)
    assert (uat1["fits_stopped"], uat1["stronger_fits_stopped"]) == (False, True)
    assert {(c.method, c.seed) for c in asked if c.uap_refine == refine and c.method in ("uat", "standard")} == {
        ("uat", 0), ("uat", 1), ("standard", 0)}
    table = tables.check_table(res["attack_check"])
    assert "| UAT | 1 | head0 |" in table and "| **no** / yes |" in table
    pub = published.published_method(study, log=quiet)
    targets = (-1, study.published_target)
    assert {(c["arm"], c["seed"], c["target"]) for c in pub["attack_check"]} == {
        *((arm, 0, t) for arm in [*published.ARMS, "dt_best"] for t in targets), *(("uat", 1, t) for t in targets)}
    # one cell per column in every row, with the seed and the targeted columns
    cells = {line.count(" | ") for line in tables.published_table(pub).split("Attack check")[1].splitlines() if line.startswith("| ")}
    assert len(cells) == 1


def test_attack_check_of_a_targeted_evaluation_also_needs_its_targeted_success_to_hold(monkeypatch):
    """A stronger suite that sends 5 points more images to the target class marks a targeted
    evaluation not converged, even when its fooling rate and accuracy under UAP barely move (at each
    level of the check's ladder)."""
    def run(self, log=print, **o):
        level = 0 if "uap_refine" not in o else 1 + (o["uap_refine"] > check.stronger(self.config)["uap_refine"])
        m = {"fooling_rate": 0.50 + 0.01 * level, "uap_acc": 0.40, "n_fit": 10 + 10 * level,
             "targeted_success": None if o["eval_target"] < 0 else 0.30 + 0.05 * level}
        return RunResult(self.config.replace(**o), Path("runs/x"), {"eval": {"head0": m}})

    monkeypatch.setattr(S.Study, "run", run)
    study = S.setup("smoke", progress=False)
    rows = {r["target"]: r for r in check.attack_check(
        study, [({"target": t}, {"eval_target": t}) for t in (-1, 9)], log=lambda s: None)}
    assert rows[-1]["converged"] and "targeted_rise" not in rows[-1]
    assert not rows[9]["converged"] and rows[9]["targeted_rise"] == pytest.approx(0.05)
    assert rows[9]["rise"] == pytest.approx(0.01)


def test_suite_at_applies_the_stronger_rule_once_per_level():
    c = S.setup("smoke", progress=False).config
    one = check.stronger(c)
    assert check.suite_at(c, 0) == {} and check.suite_at(c, 1) == one
    two = check.suite_at(c, 2)
    assert two["uap_refine"] == 2 * one["uap_refine"] + 2 and two["uap_fit_size"] == 4 * c.uap_fit_size
    assert two["uap_epochs"] == 4 * c.uap_epochs and two["uap_tol"] == pytest.approx(c.uap_tol / 4)


def _laddered(monkeypatch, fooling, who=lambda c: c.method == "uat" and c.seed == 0):
    """``_fake_runs`` with the fooling rate of the evaluations ``who`` picks ``fooling[level]`` at each
    level of the check's ladder (told apart by uap_refine; a dict per level sets each mode's);
    returns the configs asked for."""
    _fake_runs(monkeypatch)
    fake, asked = S.Study.run, []

    def run(self, log=print, **o):
        res = fake(self, log, **o)
        asked.append(res.config)
        if who(res.config):
            level = next(n for n in range(3) if check.suite_at(self.config, n).get("uap_refine", self.config.uap_refine)
                         == res.config.uap_refine)
            for key, m in res.metrics["eval"].items():
                m["fooling_rate"] = fooling[level][key] if isinstance(fooling[level], dict) else fooling[level]
        return res

    monkeypatch.setattr(S.Study, "run", run)
    return asked


def test_an_evaluation_the_stronger_suite_raises_climbs_a_level_and_reports_that_suites_figures(monkeypatch, tmp_path):
    """UAT's suite found 30% fooling, the check's 45% (+15 points: not converged), the next level
    46%: the headline reports 45% for UAT seed 0, its check row says level 1 and converged, and only
    UAT is attacked at level 2."""
    asked = _laddered(monkeypatch, [0.30, 0.45, 0.46])
    study = S.setup("smoke", root=str(tmp_path))
    res = experiments.headline(study, log=lambda s: None)
    uat = next(c for c in res["attack_check"] if c["arm"] == "uat")
    assert (uat["level"], uat["converged"], uat["fooling_rate"], uat["stronger_fooling_rate"]) == (1, True, 0.45, 0.46)
    assert uat["ladder"] == [0.30, 0.45, 0.46] and uat["stronger"] == check.suite_at(study.config, 2)
    assert {c["level"] for c in res["attack_check"] if c["arm"] != "uat"} == {0}
    assert [r["fooling_rate"] for r in res["rows"] if r["arm"] == "uat"] == [0.45]
    level2 = check.suite_at(study.config, 2)["uap_refine"]
    assert {c.method for c in asked if c.uap_refine == level2} == {"uat"}
    assert "| UAT | 0 | head0 | 1 (30.0, 45.0, 46.0) | 45.0 | 46.0 |" in tables.check_table(res["attack_check"])


def test_a_ladder_that_never_settles_leaves_the_claim_inconclusive(monkeypatch, tmp_path):
    """30%, 45%, 60%: every level raises the one before by more than the noise; the row stays at
    level 1, not converged, and every claim resting on UAT reads inconclusive."""
    _laddered(monkeypatch, [0.30, 0.45, 0.60])
    res = experiments.headline(S.setup("smoke", root=str(tmp_path)), log=lambda s: None)
    uat = next(c for c in res["attack_check"] if c["arm"] == "uat")
    assert (uat["level"], uat["converged"], uat["ladder"]) == (1, False, [0.30, 0.45, 0.60])
    assert all(c["verdict"].startswith("inconclusive") for c in res["claims"] if "uat" in c.get("verdict", ""))
    assert any("uat" in c["verdict"] for c in res["claims"])


def test_every_experiment_reports_the_level_its_check_settled_on(monkeypatch, tmp_path):
    """UAT seed 0 (the headline, cross-norm, transfer and 06 take it; 02 its K = 2 at seed 0) at
    30% / 45% / 46% on the ladder: each experiment's rows, 04's own suite figure and 06's white-box
    rows read the level-1 figure, at every norm, radius and target its check took."""
    _laddered(monkeypatch, [0.30, 0.45, 0.46])
    study = S.setup("smoke", root=str(tmp_path))
    quiet = lambda s: None
    cross = experiments.cross_norm(study, log=quiet)
    assert {r["fooling_rate"] for r in cross["rows"] if r["arm"] == "uat"} == {0.45}
    assert {c["level"] for c in cross["attack_check"] if c["arm"] == "uat"} == {1}
    moved = experiments.transfer(study, log=quiet)
    assert next(r for r in moved["reported"] if r["target"] == "cnn/uat")["suite_fooling_rate"] == 0.45
    assert next(c for c in moved["attack_check"] if c["arm"] == "cnn/uat")["level"] == 1
    pub = published.published_method(study, log=quiet)
    assert {(r["target"], r["fooling_rate"]) for r in pub["rows"] if r["arm"] == "uat" and r["attack"] == "white-box"} == {
        (-1, 0.45), (study.published_target, 0.45)}
    assert {r["fooling_rate"] for r in pub["rows"] if r["arm"] == "standard"} == {0.5}
    _laddered(monkeypatch, [0.30, 0.45, 0.46], who=lambda c: c.method == "dt" and c.heads == 2 and c.seed == 0
              and c.eval_split == "test")
    k = experiments.k_ablation(study, log=quiet)
    assert {r["fooling_rate"] for r in k["rows"] if r["heads"] == 2} == {0.45}
    assert {r["fooling_rate"] for r in k["rows"] if r["heads"] == 1} == {0.5}


def test_a_mode_whose_figure_a_weaker_level_beats_is_not_converged(monkeypatch, tmp_path):
    """The ensemble climbs (30% -> 45% -> 46%) and takes head 0 with it, whose level-1 UAP fools
    less than its level-0 one (50% -> 40% -> 41%): head 0 reports 40%, which its own weaker suite
    beat, so its row is not converged (``beaten_by_level``) though level 2 does not raise it."""
    _laddered(monkeypatch, [{"ensemble": 0.30, "head0": 0.50}, {"ensemble": 0.45, "head0": 0.40},
                            {"ensemble": 0.46, "head0": 0.41}], who=lambda c: c.method == "dt" and c.seed == 0
              and c.heads == 5 and c.eval_split == "test")
    res = experiments.headline(S.setup("smoke", root=str(tmp_path)), log=lambda s: None)
    rows = {(c["arm"], c["eval"]): c for c in res["attack_check"] if c["level"] == 1}
    assert rows and all(c["converged"] for (arm, mode), c in rows.items() if mode == "ensemble")
    assert all(not c["converged"] and c["beaten_by_level"] == [0] for (arm, mode), c in rows.items() if mode == "head0")


def test_the_check_table_of_climbed_rows_keeps_one_cell_per_column_and_old_rows_render_as_before():
    row = {"arm": "uat", "eval": "head0", "fooling_rate": 0.3, "stronger_fooling_rate": 0.31, "uap_acc": 0.5,
           "stronger_uap_acc": 0.5, "n_fit": 10, "stronger_n_fit": 20, "converged": True, "stronger": {"uap_refine": 4}}
    old = tables.check_table([row])
    assert "level" not in old and "| UAT | head0 | 30.0 | 31.0 |" in old
    assert tables.check_table([{**row, "level": 0, "ladder": [0.3, 0.31]}]) == old
    climbed = tables.check_table([{**row, "level": 0, "ladder": [0.3, 0.31]},
                                  {**row, "arm": "dt_best", "level": 1, "ladder": [0.2, 0.3, 0.31], "stronger": {"uap_refine": 10}}])
    lines = [line for line in climbed.splitlines() if line.startswith("| ")]
    assert len({line.count("|") for line in lines}) == 1 and "| DT (chosen) | head0 | 1 (20.0, 30.0, 31.0) |" in climbed
    assert "uap_refine=4" in climbed and "climbs a level" in climbed


def test_the_check_climbs_only_between_scored_evaluations(monkeypatch):
    """The fill's plan answers an evaluation not done yet with a stand-in: a real 30% against a
    stand-in's 50% asks for no level-2 suite (the fill asks again once the check is scored)."""
    asked = []

    def run(self, log=print, **o):
        cfg = self.config.replace(**o)
        asked.append(cfg)
        m = dict(fill.PLACEHOLDER, n_fit=1) if "uap_refine" in o else {"fooling_rate": 0.3, "uap_acc": 0.4, "n_fit": 1}
        return RunResult(cfg, Path("runs/x"), {"eval": {"head0": m}})

    monkeypatch.setattr(S.Study, "run", run)
    study = S.setup("smoke", progress=False)
    (row,) = check.attack_check(study, [({"arm": "uat"}, {"method": "uat"})], log=lambda s: None)
    assert row["level"] == 0 and not row["converged"] and len(asked) == 2


def test_the_fill_trains_the_grid_then_the_attackers_comparison_then_the_rest(monkeypatch, tmp_path):
    """The grid pass holds the validation runs that decide the cell (the first attacker, the grid's
    seeds); the comparison at that cell (other attackers, and the first one's runs at the further
    attacker seeds) is the second; the plan is made again after each, so no arm is trained with the
    first attacker where the comparison, once scored, hands the arms the summary's step."""
    st = S.setup("smoke", {"seeds": [0, 1], "attacker_seeds": 2, "grid_attacker": ["loss+0.5", "ensemble_ce"]},
                 root=str(tmp_path))
    val = dict(eval_split="val", eval_modes="ensemble")
    half, whole = settings.attacker("loss+0.5"), settings.attacker("ensemble_ce")
    dt = lambda step, seed, **o: st.config.replace(method="dt", heads=5, seed=seed, **step, **o)
    grid = [dt(half, 0, **val), st.config.replace(method="standard", **val)]
    comparison = [dt(whole, 0, **val), dt(half, 1, **val), dt(whole, 1, **val)]
    done, passes, trained = set(), [], []
    key = lambda c: json.dumps(c.to_dict(), sort_keys=True)

    def plan(study, notebooks):  # the arms' step: placeholders keep the first until the comparison is scored
        step = whole if all(key(c) in done for c in comparison) else half
        return grid + comparison + [dt(step, 0), dt(step, 1)]

    monkeypatch.setattr(fill, "plan", plan)
    monkeypatch.setattr(fill, "cached", lambda c, runs: key(c) in done)
    monkeypatch.setattr(fill, "ensure_trained", lambda cfg, **kw: trained.append(cfg))
    monkeypatch.setattr(fill, "evaluate", lambda todo, runs, lanes, log: (passes.append(todo), done.update(map(key, todo))))
    fill.fill_runs(st, ["01_headline"], log=lambda s: None)
    assert passes == [grid, grid + comparison, grid + comparison + [dt(whole, 0), dt(whole, 1)]]
    assert not [c for c in trained if c.eval_split == "test" and c.perturbed_fraction < 1]


def test_the_fill_ends_with_the_checks_that_scored_evaluations_ask_for(monkeypatch, tmp_path):
    """An evaluation whose fits reached the cap asks for the stronger suite on its run only once it
    is scored: the fill evaluates that check in a last pass (the run is trained already), and
    trains nothing for it."""
    st = S.setup("smoke", root=str(tmp_path))
    base = st.config.replace(method="uat", heads=1)
    strong, stronger2 = (base.replace(**check.suite_at(st.config, n)) for n in (1, 2))
    done, passes, trained = set(), [], []
    key = lambda c: json.dumps(c.to_dict(), sort_keys=True)
    # the level-1 check once the evaluation is scored; the level-2 one once the check raised it (scored)
    monkeypatch.setattr(fill, "plan", lambda study, notebooks: [base] + ([strong] if key(base) in done else [])
                        + ([stronger2] if key(strong) in done else []))
    monkeypatch.setattr(fill, "cached", lambda c, runs: key(c) in done)
    monkeypatch.setattr(fill, "_finished", lambda run_dir: True)
    monkeypatch.setattr(fill, "ensure_trained", lambda cfg, **kw: trained.append(cfg))
    monkeypatch.setattr(fill, "evaluate", lambda todo, runs, lanes, log: (passes.append(todo), done.update(map(key, todo))))
    fill.fill_runs(st, ["01_headline"], log=lambda s: None)
    assert passes[-2:] == [[strong], [stronger2]] and key(stronger2) in done and trained == [base]
