import pytest
import torch
import torch.nn.functional as F

from dtlib.attacks import fit_uap, frozen_for_attack, in_layout, perturb, pgd, project, random_uap, sgd_uap
from dtlib.config import Config
from dtlib.models import build_model
from dtlib.data import to_float
from dtlib.evaluate import fit_images
from dtlib.metrics import fooling_rate, predict, targeted_success

pytestmark = pytest.mark.precision  # trains or evaluates: run under both precisions (make test-other-precision)

EPS = 10 / 255


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_lands_in_the_ball_and_keeps_points_inside(norm):
    d = torch.randn(6, 3, 32, 32)
    p = project(d, 0.5, norm)
    size = p.abs().flatten(1).amax(1) if norm == "linf" else p.flatten(1).norm(dim=1)
    assert (size <= 0.5 + 1e-6).all()
    assert torch.allclose(project(p, 0.5, norm), p)  # idempotent
    small = d * 1e-3
    assert torch.allclose(project(small, 0.5, norm), small)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_uap_has_exactly_the_norm(norm):
    r = random_uap((1, 3, 32, 32), 0.3, norm, torch.Generator().manual_seed(0))
    if norm == "linf":
        assert torch.allclose(r.abs(), torch.full_like(r, 0.3))
    else:
        assert torch.isclose(r.norm(), torch.tensor(0.3))


def test_perturbed_images_stay_valid_pixels():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(perturb(x, torch.full((1, 3, 1, 1), 0.7)), torch.tensor([0.7, 1.0, 1.0]).view(1, 3, 1, 1))


def test_a_model_frozen_for_attack_computes_the_same_and_is_given_back_as_it_was():
    torch.manual_seed(0)
    model = build_model(Config(heads=3))
    model.train()
    model.weight.requires_grad_(False)  # a user's own freezing survives
    before = {n: (t, t.data_ptr(), t.stride(), t.requires_grad) for n, t in model.named_parameters()}
    x = torch.rand(4, 3, 32, 32)
    reference = model.eval()(x).detach()
    model.train()
    with frozen_for_attack(model) as m:
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        assert m.backbone[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        delta = torch.zeros(1, 3, 32, 32, requires_grad=True)
        assert in_layout(x, m).is_contiguous(memory_format=torch.channels_last)
        out = m(perturb(in_layout(x, m), delta))
        torch.autograd.grad(out.sum(), delta)  # the input gradient an attack takes still flows
        assert torch.allclose(out.detach(), reference, atol=1e-4, rtol=1e-4)
    assert model.training
    for n, t in model.named_parameters():
        assert (t, t.data_ptr(), t.stride(), t.requires_grad) == before[n], n
    assert all(p.grad is None for p in model.parameters())


def test_a_module_of_ones_own_keeps_its_layout_under_attack():
    """An outside module that flattens with .view (fails on channels_last activations) is attacked as it is."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(self.conv(x).view(len(x), -1))

    net = Net()
    with frozen_for_attack(net) as m:
        x = in_layout(torch.rand(2, 3, 32, 32), m)
        assert x.is_contiguous() and m.conv.weight.is_contiguous()
        assert m(x).shape == (2, 10)
    assert net.training and all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 1.0)])
def test_sgd_uap_is_universal_and_inside_its_ball(standard_model, mini, norm, eps):
    model, _ = standard_model
    fn = lambda x: model.scores(x, "single")
    fit = fit_images(mini["train"], 512, 0)
    uap = sgd_uap(fn, fit.x, fit.y, eps=eps, norm=norm, epochs=2)
    assert uap.shape == (1, 3, 32, 32)
    size = uap.abs().max() if norm == "linf" else uap.norm()
    assert size <= eps + 1e-6 and size > (0.5 if norm == "linf" else 0.2) * eps


def test_uap_fools_far_more_than_random_noise_of_the_same_norm(standard_run, standard_model, mini):
    """The issue's check that the attack is real, on the model trained on the mini set: a 10/255
    L-inf SGD-UAP fitted on training images, scored on held-out test images."""
    model, _ = standard_model
    row = standard_run.metrics["eval"]["head0"]
    assert row["clean_acc"] > 0.3  # the model learned something
    assert row["fooling_rate"] > 0.3, row
    assert row["fooling_rate"] > 4 * row["random_fooling_rate"], row
    assert row["uap_linf"] <= EPS + 1e-6


@pytest.mark.heavy
def test_uap_against_the_ensemble_of_a_multihead_model(mini, runs_dir):
    """Fitted against the ensemble mode of a DT model, the UAP beats random noise there too."""
    import dtlib
    from conftest import MINI
    res = dtlib.run(method="dt", heads=3, epochs=4, uap_fit_size=1000, uap_epochs=3, eval_modes="ensemble",
                    eval_objectives="ensemble_ce", eval_labels="predicted", uap_refine=1, runs_dir=runs_dir,
                    progress=False, log=lambda s: None, **MINI)
    row = res.metrics["eval"]["ensemble"]
    assert row["fooling_rate"] > 3 * row["random_fooling_rate"] and row["fooling_rate"] > 0.15, row


def test_targeted_uap_sends_images_to_the_target(standard_model, mini):
    """The mini-set model (about 40% clean) is too smooth to steer at 10/255 (measured: 9% vs 7%
    base; a full-data 87% model reaches 69-80% at 10/255), so the mechanics are checked at 32/255."""
    model, _ = standard_model
    fn = lambda x: model.scores(x, "single")
    fit, test, eps = fit_images(mini["train"], 1000, 0), mini["test"], 32 / 255
    uap = sgd_uap(fn, fit.x, fit.y, eps=eps, target=9, epochs=5)
    hit = targeted_success(predict(fn, test.x, delta=uap), test.y, 9)
    base = targeted_success(predict(fn, test.x), test.y, 9)
    rnd = targeted_success(predict(fn, test.x, delta=random_uap(uap.shape, eps)), test.y, 9)
    assert hit > base + 0.3 and hit > rnd + 0.3, (hit, base, rnd)


def test_restarts_keep_the_strongest_uap(standard_model, mini):
    model, _ = standard_model
    fn = lambda x: model.scores(x, "single")
    fit = fit_images(mini["train"], 256, 0)
    x, y = fit.x, fit.y
    one = sgd_uap(fn, x, y, eps=EPS, epochs=1, restarts=1)
    three = sgd_uap(fn, x, y, eps=EPS, epochs=1, restarts=3)
    clean = predict(fn, x)
    assert fooling_rate(clean, predict(fn, x, delta=three)) >= fooling_rate(clean, predict(fn, x, delta=one))


def test_pgd_stays_in_the_ball_raises_the_loss_and_leaves_parameter_grads_alone(standard_model, mini):
    model, _ = standard_model
    fn = lambda x: model.scores(x, "single")
    x, y = to_float(mini["test"].x[:64]), mini["test"].y[:64]
    x_adv = pgd(fn, x, y, eps=8 / 255, alpha=2 / 255, steps=7, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(fn(x_adv), y) > F.cross_entropy(fn(x), y) + 0.5
    assert all(p.grad is None for p in model.parameters())


def test_bad_attack_arguments_are_one_sentence_errors(standard_model, mini):
    model, _ = standard_model
    fn = lambda x: model.scores(x, "single")
    with pytest.raises(ValueError, match="Unknown norm 'l1'"):
        sgd_uap(fn, mini["train"].x[:8], mini["train"].y[:8], eps=EPS, norm="l1")
    with pytest.raises(ValueError, match=r"eps=2 is outside \[0, 1\]"):
        sgd_uap(fn, mini["train"].x[:8], mini["train"].y[:8], eps=2)


@pytest.mark.parametrize("n, batches", [(300, [128, 128] * 3), (100, [100] * 3), (256, [128, 128, 128])])
def test_a_uap_step_is_never_taken_on_the_few_images_left_over_by_a_pass(n, batches):
    """300 images in batches of 128 are two steps a pass, not three (the third on 44 images);
    fewer images than a batch are one step on all of them; every image is met across passes."""
    seen, met = [], set()
    images = torch.rand(n, 3, 4, 4)

    def loss(x, y):
        seen.append(len(x))
        met.update(y.tolist())
        return x.sum()

    fit_uap(loss, images, torch.arange(n), eps=EPS, step=EPS / 4, max_steps=len(batches), batch_size=128,
            generator=torch.Generator().manual_seed(0))
    assert seen == batches
    assert len(met) > 256 if n == 300 else met == set(range(n))
