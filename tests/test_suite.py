"""The evaluation attack suite (``dtlib.suite``) and its stopping rule (``attacks.fit_uap``): each
entry fools a model built to be fooled by it, the rule raises an under-fitted UAP and stops on a
converged one, transferred UAPs never beat what is reported, and the reported numbers are the
maximum fooling rate and minimum accuracy of the recorded entries."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dtlib import suite as suite_module
from dtlib.attacks import fit_uap
from dtlib.data import Split
from dtlib.metrics import fooling_rate, predict
from dtlib.suite import Suite, attack, attack_model, objective_loss, patterns

from conftest import DATA_DIR

EPS = 10 / 255
SHAPE = (3, 8, 8)


def _gray(n=64, seed=0):
    """Images near mid-grey (floats in [0, 1]) with labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    return Split(0.5 + 0.02 * torch.rand(n, *SHAPE, generator=g), torch.arange(n) % 10)


class Detector(nn.Module):
    """Predicts class 1 unless the image, less mid-grey, correlates with ``pattern`` (then class 0):
    fooled by adding that pattern, and by nothing much else."""

    def __init__(self, pattern: torch.Tensor):
        super().__init__()
        self.register_buffer("direction", pattern.flatten() / pattern.abs().max())

    def forward(self, x):
        s = (x - 0.5).flatten(1) @ self.direction / self.direction.abs().sum()
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 400 * (s - 0.5 * EPS)  # crosses class 1's zero only when s > eps / 2
        return logits


def _suite(**kw):
    return Suite(eps=EPS, max_epochs=3, window=4, batch_size=16, **{"refine": 0, **kw})


@pytest.mark.parametrize("name", sorted(patterns(SHAPE, EPS)))
def test_each_pattern_fools_the_model_it_was_made_for(name):
    p = patterns(SHAPE, EPS)[name]
    assert p.abs().max() == pytest.approx(EPS)  # every floor has the full radius
    data = _gray()
    found, won = attack_model(Detector(p), data, data, _suite(lrs=(0.01,)), mode="single")
    assert found["entries"][f"pattern:{name}"]["fooling_rate"] == 1.0
    assert found["fooling_rate"] == 1.0


class Linear(nn.Module):
    """K linear heads on the flattened image: the gradient points straight at the way to fool them."""

    def __init__(self, heads=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = SHAPE[0] * SHAPE[1] * SHAPE[2]  # heads that differ, around a shared map
        self.w = nn.Parameter(torch.randn(1, 10, d, generator=g) + 0.3 * torch.randn(heads, 10, d, generator=g))

    def forward(self, x):
        return torch.einsum("kcd,bd->kbc", self.w, (x - 0.5).flatten(1) * 40)


@pytest.mark.parametrize("objective", ["ensemble_ce", "heads_ce", "mean_logit"])
@pytest.mark.parametrize("labels", ["predicted", "true"])
def test_each_sgd_objective_and_label_kind_fools_linear_heads(objective, labels):
    net = Linear()
    scores = lambda x: F.log_softmax(net(x), -1).exp().mean(0).log()
    fit, test = _gray(200), _gray(200, seed=1)  # labelled as the model sees them: it is 100% accurate
    fit, test = (Split(d.x, predict(scores, d.x)) for d in (fit, test))
    found, _ = attack(net, scores, fit, test, _suite(objectives=(objective,), labels=(labels,), lrs=(0.25,)))
    (name,) = [n for n in found["entries"] if n.startswith("sgd:")]
    assert name == f"sgd:{objective}/{labels}/lr0.25"
    assert found["entries"][name]["fooling_rate"] > 0.8, found["entries"][name]
    assert found["entries"][name]["uap_acc"] < 0.2


def test_objectives_differ_and_agree_with_one_head():
    parts, y = torch.randn(3, 8, 10), torch.arange(8)
    losses = {o: objective_loss(parts, y, o).item() for o in ("ensemble_ce", "heads_ce", "mean_logit")}
    assert len(set(round(v, 6) for v in losses.values())) == 3
    one = {o: objective_loss(parts[:1], y, o).item() for o in losses}
    assert max(one.values()) - min(one.values()) < 1e-5  # one part: one cross-entropy
    assert one["heads_ce"] == pytest.approx(F.cross_entropy(parts[0], y).item(), rel=1e-5)


def test_the_reported_numbers_are_the_extremes_of_the_recorded_entries():
    net, data = Linear(heads=2, seed=3), _gray(160)
    scores = lambda x: net(x).mean(0)
    other = torch.full((1, *SHAPE), EPS)
    found, won = attack(net, scores, data, _gray(100, seed=2), _suite(lrs=(0.05, 0.25)), candidates={"elsewhere": other})
    rates = {n: e["fooling_rate"] for n, e in found["entries"].items()}
    accs = {n: e["uap_acc"] for n, e in found["entries"].items()}
    assert found["fooling_rate"] == max(rates.values()) == rates[found["fooling_by"]]
    assert found["uap_acc"] == min(accs.values()) == accs[found["uap_acc_by"]]
    assert "transfer:elsewhere" in rates and found["fooling_rate"] >= rates["transfer:elsewhere"]
    assert {n.split(":")[0] for n in rates} == {"pattern", "transfer", "sgd"}
    assert len([n for n in rates if n.startswith("sgd:")]) == 3 * 2 * 2  # objectives x labels x steps
    test = _gray(100, seed=2)
    adv = predict(scores, test.x, delta=won["fooling"].to(test.x))
    assert fooling_rate(predict(scores, test.x), adv) == found["fooling_rate"]  # the saved winner is that entry


def test_extra_random_starts_go_to_the_best_setting_of_each_label_kind():
    net = Linear(heads=2, seed=3)
    scores = lambda x: net(x).mean(0)
    fit, test = (Split(d.x, predict(scores, d.x)) for d in (_gray(160), _gray(100, seed=2)))  # 100% accurate
    # a step of 0.002 eps cannot move far in 3 passes: 0.25 eps is the setting that reads the best rate
    found, _ = attack(net, scores, fit, test, _suite(objectives=("ensemble_ce",), lrs=(0.002, 0.25), refine=2))
    fits = {n: e for n, e in found["entries"].items() if n.startswith("sgd:")}
    for kind in ("predicted", "true"):
        screened = {n: e["fit_score"] for n, e in fits.items() if f"/{kind}/" in n and "restart" not in n}
        best = max(screened, key=screened.get)
        assert best.endswith("lr0.25")
        extra = sorted(n for n in fits if f"/{kind}/" in n and "restart" in n)
        assert extra == [f"{best}/restart1", f"{best}/restart2"]
    assert len(fits) == 2 * 2 + 2 * 2  # labels x steps, then refine per kind
    assert found["fooling_rate"] == max(e["fooling_rate"] for e in found["entries"].values())


def test_a_plain_module_is_attacked_as_one_part():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    found, won = attack_model(net, _gray(64), _gray(50, seed=4), _suite(), mode="ensemble")
    assert [n for n in found["entries"] if n.startswith("sgd:")] == ["sgd:ce/predicted/lr0.1", "sgd:ce/predicted/lr0.25",
                                                                     "sgd:ce/true/lr0.1", "sgd:ce/true/lr0.25"]
    assert won["fooling"].shape == (1, *SHAPE) and won["fooling"].abs().max() <= EPS + 1e-7


def _rule_setup():
    torch.manual_seed(0)
    net = Linear(heads=1, seed=5)
    data = _gray(256)
    scores = lambda x: net(x)[0]
    clean = predict(scores, data.x)
    monitor = lambda d: fooling_rate(clean, predict(scores, data.x, delta=d))
    loss = lambda x, y: objective_loss(net(x), y, "ce")
    return data, clean, monitor, loss


def test_the_stopping_rule_raises_an_underfitted_uap_and_stops_on_a_converged_one():
    data, clean, monitor, loss = _rule_setup()
    kw = dict(eps=EPS, step=0.02 * EPS, batch_size=32, monitor=monitor, window=8, tol=0.005, patience=2,
              generator=torch.Generator().manual_seed(0))
    under, info = fit_uap(loss, data.x, clean, max_steps=2, **kw)  # two steps: far from done
    assert not info["converged"] and info["steps"] == 2
    more, info = fit_uap(loss, data.x, clean, max_steps=2000, start=under, **kw)
    assert info["converged"] and 8 < info["steps"] < 2000
    assert monitor(more) > monitor(under) + 0.1
    assert info["fit_score"] == max(info["trace"]) == monitor(more)
    again, info = fit_uap(loss, data.x, clean, max_steps=2000, start=more, **kw)  # already converged
    assert info["converged"] and info["steps"] == 2 * 8 and len(info["trace"]) == 3  # patience 2: two idle readings
    assert monitor(again) >= monitor(more)


def test_one_idle_reading_does_not_end_a_fit_under_patience():
    """A rate that stalls for one reading and then rises again: patience 1 stops at the stall,
    patience 2 goes on and finds the rise."""
    rates = iter([0.0, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3, 0.3])
    stalls = lambda d: next(rates)
    images, labels = torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long)
    loss = lambda x, y: x.sum()
    kw = dict(eps=EPS, step=0.1 * EPS, batch_size=8, window=1, tol=0.01, max_steps=100)
    _, info = fit_uap(loss, images, labels, monitor=stalls, patience=1, **kw)
    assert info["trace"] == [0.0, 0.1, 0.1] and info["steps"] == 2
    rates = iter([0.0, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3, 0.3])
    _, info = fit_uap(loss, images, labels, monitor=lambda d: next(rates), patience=2, **kw)
    assert info["trace"] == [0.0, 0.1, 0.1, 0.3, 0.3, 0.3] and info["steps"] == 5 and info["fit_score"] == 0.3


def test_heads_ce_clamps_each_head_before_averaging():
    """A head already fooled far beyond the clamp adds at most beta, so the others keep their pull."""
    labels = torch.tensor([0])
    fooled = torch.tensor([[[-100.0, 100.0]]])           # CE about 200 on one head
    unsure = torch.tensor([[[0.0, 0.0]]])                # CE log 2 on the other
    parts = torch.cat([fooled, unsure])                  # (K=2, B=1, C=2)
    assert objective_loss(parts, labels, "heads_ce", beta=12.0).item() == pytest.approx((12.0 + math.log(2)) / 2)


def test_the_command_line_attacks_a_model_of_ones_own(tmp_path):
    """`python -m dtlib attack package.module:factory weights.pt`: any module mapping images in
    [0, 1] to logits, not a MultiHead; the metrics record is the study's own."""
    (tmp_path / "mine.py").write_text("import torch.nn as nn\n\n\ndef make():\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))\n")
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).state_dict(), tmp_path / "w.pt")
    settings = ["data=mini", f"data_dir={DATA_DIR}", "uap_fit_size=128", "uap_epochs=1", "eval_size=100", "device=cpu"]
    out = subprocess.run([sys.executable, "-m", "dtlib", "attack", "mine:make", "w.pt", *settings, "out=r.json"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((tmp_path / "r.json").read_text())
    (row,) = rec["eval"].values()
    assert row["fooling_rate"] == max(e["fooling_rate"] for e in row["attack"].values())
    assert row["uap_acc"] == min(e["uap_acc"] for e in row["attack"].values())
    assert rec["model"] == "mine:make" and len(rec["weights_sha256"]) == 64 and row["n_test"] == 100
    assert f"fooling {row['fooling_rate']:.3f}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dtlib", "attack", "mine:nothing", "w.pt", *settings],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: Model 'mine:nothing': module 'mine' has no 'nothing'.\n"


def _fits_counted(monkeypatch, die_at=0):
    """Count ``fit_uap`` calls of the suite; the ``die_at``-th raises KeyboardInterrupt (a kill)."""
    calls = []

    def counted(*args, **kw):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return fit_uap(*args, **kw)

    monkeypatch.setattr(suite_module, "fit_uap", counted)
    return calls


def test_a_killed_suite_goes_on_from_its_journal_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    net = Linear(heads=2, seed=3)
    scores = lambda x: net(x).mean(0)
    fit, test = _gray(160), _gray(100, seed=2)
    suite = _suite(lrs=(0.05, 0.25), refine=2)  # random restarts: the generator's draws after a fit matter
    calls = _fits_counted(monkeypatch)
    whole, won = attack(net, scores, fit, test, suite)
    total = len(calls)
    assert total == 3 * 2 * 2 + 2 * 2
    journal = tmp_path / "suite.pt"
    calls = _fits_counted(monkeypatch, die_at=total - 1)  # killed in its refining fits
    with pytest.raises(KeyboardInterrupt):
        attack(net, scores, fit, test, suite, journal=journal)
    calls = _fits_counted(monkeypatch)
    resumed, won_again = attack(net, scores, fit, test, suite, journal=journal)
    assert len(calls) == 2  # the fit that was killed and the one after it
    assert resumed == whole
    assert all(torch.equal(won[k], won_again[k]) for k in won)
    # the journal now holds every fit; another suite, or another model (other clean predictions on
    # the fitting images), does not read it, nor does anyone read a damaged one
    for other_net, other_suite in ((net, _suite(lrs=(0.05, 0.25), refine=2, seed=1)), (Linear(heads=2, seed=4), suite)):
        (tmp_path / "other.pt").write_bytes(journal.read_bytes())
        calls = _fits_counted(monkeypatch)
        attack(other_net, lambda x: other_net(x).mean(0), fit, test, other_suite, journal=tmp_path / "other.pt")
        assert len(calls) == total
    (tmp_path / "other.pt").write_bytes(journal.read_bytes())
    calls = _fits_counted(monkeypatch)  # the same predictions, but the caller says the weights differ
    attack(net, scores, fit, test, suite, journal=tmp_path / "other.pt", identity="other weights")
    assert len(calls) == total
    calls = _fits_counted(monkeypatch)
    journal.write_bytes(journal.read_bytes()[:200])
    assert attack(net, scores, fit, test, suite, journal=journal)[0] == whole and len(calls) == total
