import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from dtlib.losses import dt_loss, ensemble_cross_entropy, heads_cross_entropy, jsd


def logits_strategy(max_k=6):
    return st.tuples(st.integers(1, max_k), st.integers(1, 4), st.integers(2, 10), st.integers(0, 2**31 - 1),
                     st.floats(0.01, 30.0))


def draw(k, b, c, seed, scale):
    return torch.randn(k, b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def kl(p, q):
    return (p * (p / q).log()).sum(-1)


@settings(max_examples=60, deadline=None)
@given(logits_strategy())
def test_jsd_is_between_zero_and_log_k_and_symmetric(args):
    k, b, c, seed, scale = args
    z = draw(k, b, c, seed, scale)
    d = jsd(z)
    assert d.shape == (b,)
    assert (d >= -1e-6).all() and (d <= math.log(k) + 1e-6).all()
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(jsd(z[perm]), d, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(logits_strategy())
def test_jsd_is_zero_for_identical_heads(args):
    k, b, c, seed, scale = args
    z = draw(1, b, c, seed, scale).expand(k, b, c)
    assert torch.allclose(jsd(z), torch.zeros(b), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(logits_strategy())
def test_jsd_of_two_heads_is_the_classic_jsd(args):
    _, b, c, seed, scale = args
    z = draw(2, b, c, seed, scale)
    p, q = z.softmax(-1)
    m = (p + q) / 2
    assert torch.allclose(jsd(z).double(), 0.5 * kl(p, m) + 0.5 * kl(q, m), atol=1e-5)


def test_jsd_reaches_log_k_for_disjoint_one_hot_heads_with_finite_gradients():
    for k in (2, 3, 5, 10):
        z = torch.full((k, 1, 10), -1e4)
        z[torch.arange(k), 0, torch.arange(k)] = 1e4  # head i is one-hot on class i
        z.requires_grad_(True)
        d = jsd(z)
        assert torch.allclose(d, torch.tensor([math.log(k)]), atol=1e-5)
        d.sum().backward()
        assert torch.isfinite(z.grad).all()


def test_jsd_finite_for_saturated_and_near_zero_probabilities():
    z = torch.tensor([[[1e30, -1e30, 0.0]], [[-1e30, 1e30, 0.0]], [[50.0, -50.0, -80.0]]], requires_grad=True)
    d = jsd(z)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(z.grad).all()


def test_dt_loss_is_the_documented_combination():
    g = torch.Generator().manual_seed(0)
    clean, uap = torch.randn(5, 8, 10, generator=g), torch.randn(5, 8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    loss, parts = dt_loss(clean, uap, y, lambda_cons=0.3, lambda_div=0.7, lambda_adv=0.2)
    ce = torch.stack([F.cross_entropy(clean[i], y) for i in range(5)]).mean()
    ens_ce = F.nll_loss(uap.softmax(-1).mean(0).log(), y)
    expect = ce + 0.3 * jsd(clean).mean() - 0.7 * jsd(uap).mean() + 0.2 * ens_ce
    assert torch.allclose(loss, expect, atol=1e-5)
    assert torch.allclose(parts["ce"], ce) and torch.allclose(parts["ce_uap"], ens_ce, atol=1e-6)
    assert torch.allclose(heads_cross_entropy(clean, y), ce)
    assert torch.allclose(ensemble_cross_entropy(uap, y), ens_ce, atol=1e-6)
    # lambda_adv = 0 is the seed's literal loss: no CE on perturbed inputs at all
    literal, parts0 = dt_loss(clean, uap, y, lambda_cons=0.3, lambda_div=0.7)
    assert "ce_uap" not in parts0 and torch.allclose(literal, expect - 0.2 * ens_ce, atol=1e-5)


def test_minimising_dt_loss_pushes_heads_apart_on_uap_inputs_and_together_on_clean():
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(5, 16, 10, generator=g, requires_grad=True)
    uap = torch.randn(5, 16, 10, generator=g, requires_grad=True)
    y = torch.randint(0, 10, (16,), generator=g)
    before = jsd(clean).mean().item(), jsd(uap).mean().item()
    opt = torch.optim.SGD([clean, uap], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        dt_loss(clean, uap, y, lambda_cons=1.0, lambda_div=1.0)[0].backward()
        opt.step()
    assert jsd(clean).mean().item() < before[0] and jsd(uap).mean().item() > before[1]


@pytest.mark.parametrize("name,value", [("lambda_div", -1.0), ("lambda_cons", float("nan")), ("lambda_adv", float("inf"))])
def test_bad_loss_weights_are_rejected(name, value):
    z = torch.zeros(2, 1, 10)
    with pytest.raises(ValueError, match=name):
        dt_loss(z, z, torch.zeros(1, dtype=torch.long), **{name: value})


def test_per_head_functions_reject_two_dimensional_logits():
    with pytest.raises(ValueError, match=r"Expected per-head logits of shape \(K, B, C\), got shape \(4, 10\)"):
        jsd(torch.zeros(4, 10))
    with pytest.raises(ValueError, match="per-head logits"):
        heads_cross_entropy(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))
