"""The per-batch steps of ``dtlib.methods``: what each method's step does to its running UAP, checked
against the gradient it should follow, and the registry the loop and ``Config`` share."""
import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn

from dtlib import Config
from dtlib.attacks import ascent, perturb, project
from dtlib.config import METHODS
from dtlib.losses import dt_loss, ensemble_cross_entropy
from dtlib.methods import DT, STEPS, UAT, RunningUAP
from dtlib.models import MultiHead, build_model

from conftest import MINI


def test_the_registry_holds_every_method_config_accepts():
    assert set(STEPS) == set(METHODS)
    assert all(isinstance(STEPS[m], type) for m in METHODS)


@pytest.mark.parametrize("method", ["dt", "uat"])
def test_the_running_uap_takes_its_shape_from_the_images_and_survives_a_checkpoint(method):
    """Not CIFAR's 3 x 32 x 32 by construction: ImageNet-sized (here 3 x 24 x 20) images get a
    perturbation of their own shape at the first batch, which the step's state carries."""
    cfg = Config(method=method, heads=2, **MINI)
    torch.manual_seed(0)
    model = MultiHead(nn.Sequential(nn.Flatten()), 3 * 24 * 20, heads=2).train()
    step = STEPS[method](model, cfg, torch.device("cpu"))
    assert isinstance(step, RunningUAP) and step.state_dict()["delta"] is None
    x, y = torch.rand(8, 3, 24, 20), torch.randint(0, 10, (8,))
    step.loss(x, y)[0].backward()
    step.after_backward()
    assert step.delta.shape == (1, 3, 24, 20)
    assert 0 < step.delta.abs().max() <= cfg.eps + 1e-7
    again = STEPS[method](model, cfg, torch.device("cpu"))
    again.load_state_dict(step.state_dict())
    assert torch.equal(again.delta, step.delta) and again.state_dict().get("batch") == step.state_dict().get("batch")


@contextmanager
def saved_tensor_reads():
    """Counts of the tensors autograd saves for backward (``packed``) and reads back (``unpacked``):
    more reads than saves means a second pass through the graph."""
    reads = {"packed": 0, "unpacked": 0}

    def count(kind):
        def hook(t):
            reads[kind] += 1
            return t
        return hook

    with torch.autograd.graph.saved_tensors_hooks(count("packed"), count("unpacked")):
        yield reads


def _dt_step_and_twin_logits(cfg):
    """A DT step at a small random running UAP, a batch, and an independent copy's logits (K, 2B, C)
    of the same batched forward with delta0 as a leaf."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    step = DT(model, cfg, torch.device("cpu"))
    step.delta = project(torch.randn(1, 3, 32, 32) * 0.01, cfg.eps, "linf")
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    twin = copy.deepcopy(model)
    d0 = step.delta.clone().requires_grad_(True)
    logits = twin(torch.cat([x, perturb(x, d0)]))
    return model, step, x, y, d0, logits


def test_dt_step_moves_the_running_uap_up_the_ensemble_loss():
    """One DT step: delta moves by uap_step along sign(d CE_ensemble(x + delta) / d delta), the
    gradient taken in the same batched forward as the weights' loss."""
    cfg = Config(method="dt", heads=4, uap_step=2 / 255, **MINI)
    model, step, x, y, d0, logits = _dt_step_and_twin_logits(cfg)
    g, = torch.autograd.grad(ensemble_cross_entropy(logits[:, 32:], y), d0)
    expected = project(d0.detach() + cfg.uap_step * ascent(g, "linf"), cfg.eps, "linf")
    loss, clean = step.loss(x, y)
    loss.backward()
    step.after_backward()
    assert clean.shape == (4, 32, 10)
    assert torch.allclose(step.delta, expected, atol=1e-7)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("lambda_div", [0.0, 1.0])
def test_dt_with_uap_objective_loss_takes_the_uaps_gradient_from_the_weights_backward(lambda_div):
    """uap_objective=loss: delta ascends the DT loss itself, its gradient left by the one backward
    pass (no second pass through the graph); it is not the ensemble CE's, not even at lambda_div=0,
    because BatchNorm's batch statistics let the clean terms depend on delta."""
    cfg = Config(method="dt", heads=3, lambda_div=lambda_div, lambda_adv=1.0, uap_objective="loss", **MINI)
    model, step, x, y, d0, logits = _dt_step_and_twin_logits(cfg)
    full, _ = dt_loss(logits[:, :32], logits[:, 32:], y, lambda_div=lambda_div, lambda_adv=1.0)
    g, = torch.autograd.grad(full, d0, retain_graph=True)
    g_ce, = torch.autograd.grad(ensemble_cross_entropy(logits[:, 32:], y), d0)
    with saved_tensor_reads() as reads:
        loss, _ = step.loss(x, y)
        loss.backward()
    step.after_backward()
    expected = project(d0.detach() + cfg.uap_step * ascent(g, "linf"), cfg.eps, "linf")
    assert torch.allclose(step.delta, expected, atol=1e-7)
    assert not torch.equal(g.sign(), g_ce.sign())
    assert reads["unpacked"] <= reads["packed"]  # one pass through the graph: each saved tensor read at most once
    ce_step = DT(model, cfg.replace(uap_objective="ensemble_ce"), torch.device("cpu"))
    with saved_tensor_reads() as reads:
        ce_step.loss(x, y)[0].backward()
    assert reads["unpacked"] > reads["packed"]  # ensemble_ce: a second pass re-reads the perturbed path


def test_dt_with_uap_fraction_takes_the_gradient_from_a_pass_over_part_of_the_batch():
    """uap_fraction=0.25: delta ascends the ensemble CE of the first quarter of the perturbed images,
    forwarded alone (BatchNorm on their batch statistics), and that pass leaves BatchNorm's running
    statistics as the training step alone leaves them; the weights' loss is the whole batch's."""
    cfg = Config(method="dt", heads=3, lambda_adv=1.0, uap_fraction=0.25, **MINI)
    model, step, x, y, d0, logits = _dt_step_and_twin_logits(cfg)
    twin = copy.deepcopy(model)
    part = twin(perturb(x[:8], d0))
    g, = torch.autograd.grad(ensemble_cross_entropy(part, y[:8]), d0)
    expected = project(d0.detach() + cfg.uap_step * ascent(g, "linf"), cfg.eps, "linf")
    whole = DT(copy.deepcopy(model), cfg.replace(uap_fraction=1.0), torch.device("cpu"))
    whole.delta = step.delta.clone()
    loss_whole, _ = whole.loss(x, y)
    loss, _ = step.loss(x, y)
    loss.backward()
    step.after_backward()
    assert torch.allclose(step.delta, expected, atol=1e-7)
    assert torch.allclose(loss, loss_whole)  # the same weights' loss
    stats = lambda m: [b.clone() for n, b in m.named_buffers() if "running" in n or "num_batches" in n]
    assert all(torch.equal(a, b) for a, b in zip(stats(model), stats(whole.model)))  # running stats: one update
    with pytest.raises(ValueError, match="uap_fraction=0.5 sets ensemble_ce's gradient pass"):
        cfg.replace(uap_fraction=0.5, uap_objective="loss")
    with pytest.raises(ValueError, match=r"uap_fraction must be a fraction in \(0, 1\], got 0.0"):
        cfg.replace(uap_fraction=0.0)


@pytest.mark.parametrize("objective", ["ensemble_ce", "loss"])
def test_dt_with_perturbed_fraction_perturbs_the_first_part_of_the_batch_only(objective):
    """perturbed_fraction=0.25: one forward of the 32 clean images and the first 8 of them plus
    delta; the loss is dt_loss on those logits (the clean terms over all 32, the perturbed ones over
    the 8 with their labels), and delta ascends that loss or the ensemble CE of the 8."""
    cfg = Config(method="dt", heads=3, lambda_adv=1.0, perturbed_fraction=0.25, uap_objective=objective, **MINI)
    model, step, x, y, d0, _ = _dt_step_and_twin_logits(cfg)
    twin = copy.deepcopy(model)
    logits = twin(torch.cat([x, perturb(x[:8], d0)]))
    want, _ = dt_loss(logits[:, :32], logits[:, 32:], y, lambda_div=cfg.lambda_div, lambda_adv=1.0, uap_y=y[:8])
    ascend = want if objective == "loss" else ensemble_cross_entropy(logits[:, 32:], y[:8])
    g, = torch.autograd.grad(ascend, d0)
    rows = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    loss, clean = step.loss(x, y)
    hook.remove()
    loss.backward()
    step.after_backward()
    assert rows == [40] and clean.shape[1] == 32
    assert torch.allclose(loss, want, atol=1e-6)
    assert torch.allclose(step.delta, project(d0.detach() + cfg.uap_step * ascent(g, "linf"), cfg.eps, "linf"), atol=1e-7)
    # at 1, the summary's step: every image clean and perturbed, the loss of the whole batch twice over
    full = DT(copy.deepcopy(twin), cfg.replace(perturbed_fraction=1.0), torch.device("cpu"))
    full.delta = d0.detach().clone()
    both = twin(torch.cat([x, perturb(x, d0.detach())]))
    assert torch.allclose(full.loss(x, y)[0], dt_loss(both[:, :32], both[:, 32:], y, lambda_div=cfg.lambda_div,
                                                      lambda_adv=1.0)[0], atol=1e-6)


@pytest.mark.parametrize("objective", ["ensemble_ce", "loss"])
def test_dt_with_uap_every_moves_the_uap_on_every_nth_batch_only_and_skips_the_pass_between(objective):
    """uap_every=3: batches 0 and 3 move the UAP one step up its gradient, as uap_every=1 would;
    batches 1, 2 and 4 train against it unchanged, with no second pass through the graph and no
    gradient kept for delta. A resumed step (its state) goes on counting where it stopped."""
    cfg = Config(method="dt", heads=3, lambda_adv=1.0, uap_every=3, uap_objective=objective, **MINI)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    step = DT(model, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(5)]
    moved, second_pass = [], []
    for i, (x, y) in enumerate(batches):
        if i == 2:  # a checkpoint between batches 1 and 2
            state = step.state_dict()
            step = DT(model, cfg, torch.device("cpu"))
            step.load_state_dict(state)
        before = None if step.delta is None else step.delta.clone()
        with saved_tensor_reads() as reads:
            loss, _ = step.loss(x, y)
            loss.backward()
        second_pass.append(reads["unpacked"] > reads["packed"])
        if not step.moves:
            assert step.delta.grad is None and step._grad is None
        step.after_backward()
        moved.append(before is None and step.delta.abs().max() > 0 or before is not None and not torch.equal(before, step.delta))
    assert moved == [True, False, False, True, False]
    assert second_pass == ([True, False, False, True, False] if objective == "ensemble_ce" else [False] * 5)
    assert step.batch == 5


def test_uat_step_moves_the_running_uap_up_the_training_loss():
    cfg = Config(method="uat", uap_step=1 / 255, norm="l2", eps=0.5, **MINI)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    step = UAT(model, cfg, torch.device("cpu"))
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    twin = copy.deepcopy(model)
    assert step.delta is None  # made at the first batch, in the batch's image shape: zeros
    d0 = torch.zeros(1, 3, 32, 32, requires_grad=True)
    g, = torch.autograd.grad(torch.nn.functional.cross_entropy(twin(perturb(x, d0))[0], y), d0)
    loss, _ = step.loss(x, y)
    loss.backward()
    step.after_backward()
    expected = project(d0.detach() + cfg.uap_step * ascent(g, "l2"), 0.5, "l2")
    assert torch.allclose(step.delta, expected, atol=1e-7)
    assert torch.isclose(step.delta.norm(), torch.tensor(1 / 255), rtol=1e-4)  # an L2 step of uap_step
