"""The training objective of METHOD.md §6, checked by autograd and by hand."""

import math

import pytest
import torch

from masters.losses import LossWeights, k3_kl, masters_loss, token_losses


def _policy(seed=0, n=5, v=7):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(n, v, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    logp = torch.log_softmax(weights, -1).gather(1, targets[:, None]).squeeze(1)
    return weights, logp


def test_policy_term_gradient_is_minus_advantage_times_grad_log_pi():
    advantages = torch.tensor([1.5, -0.5, 0.0, 2.0, -1.0])
    weights, logp = _policy()
    loss, _ = masters_loss(logp, logp.detach(), advantages, torch.zeros(5), LossWeights(beta=0.0, lam=0.0))
    (grad,) = torch.autograd.grad(loss, weights)
    weights2, logp2 = _policy()
    (expected,) = torch.autograd.grad((-advantages * logp2).mean(), weights2)
    torch.testing.assert_close(grad, expected)
    assert loss.item() == pytest.approx(-advantages.mean().item())  # ρ = 1 in value


def test_kl_is_zero_with_zero_gradient_when_theta_is_ref():
    weights, logp = _policy(1)
    kl = k3_kl(logp, logp.detach())
    assert torch.all(kl == 0)
    (grad,) = torch.autograd.grad(kl.sum(), weights)
    assert torch.all(grad == 0)
    assert torch.all(k3_kl(torch.log(torch.tensor([0.2, 0.7])), torch.log(torch.tensor([0.5, 0.1]))) > 0)


def test_hand_computed_total():
    logp_theta = torch.log(torch.tensor([0.5, 0.25]))
    logp_ref = torch.log(torch.tensor([0.25, 0.5]))
    kl1 = 0.5 - math.log(0.5) - 1  # exp(ln .25 − ln .5) − (ln .25 − ln .5) − 1
    kl2 = 2.0 - math.log(2.0) - 1
    expected = (-(1.0 - 0.1 * kl1) + 0.1 + -(-1.0 - 0.1 * kl2) + 0.2) / 2
    loss, stats = masters_loss(logp_theta, logp_ref, torch.tensor([1.0, -1.0]), torch.tensor([0.1, 0.2]), LossWeights())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["kl"] == pytest.approx((kl1 + kl2) / 2, abs=1e-6)


def test_jsd_only_variant_ignores_rewards():
    parts = token_losses(torch.zeros(3), torch.ones(3), torch.tensor([5.0, -5.0, 1.0]), torch.tensor([0.1, 0.2, 0.3]),
                         LossWeights(kind="jsd", lam=2.0))
    torch.testing.assert_close(parts["loss"], torch.tensor([0.2, 0.4, 0.6]))


def test_bad_weights_and_shapes():
    with pytest.raises(ValueError, match="loss kind"):
        LossWeights(kind="grpo")
    with pytest.raises(ValueError, match="share one shape"):
        token_losses(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3), LossWeights())


@pytest.mark.parametrize("weights", [{"beta": -0.1}, {"lam": -1.0}, {"kind": "grpo"}])
def test_loss_weights_reject_each_bad_setting_alone(weights):
    with pytest.raises(ValueError, match="beta and lam must be >= 0|loss kind"):
        LossWeights(**weights)


@pytest.mark.parametrize("name", ["visual_kl", "rdist", "nll"])
def test_llava_kd_weights_reject_negatives_and_nll_adds_the_autoregressive_loss(name):
    with pytest.raises(ValueError, match="visual_kl, rdist and nll must be >= 0"):
        LossWeights(**{name: -0.1})
    logp, ref, adv, jsd = torch.tensor([-0.5, -2.0]), torch.tensor([-0.4, -1.0]), torch.tensor([1.0, -1.0]), torch.tensor([0.1, 0.2])
    for kind in ("jsd", "masters"):
        plain = token_losses(logp, ref, adv, jsd, LossWeights(kind=kind))["loss"]
        reg = token_losses(logp, ref, adv, jsd, LossWeights(kind=kind, nll=0.3))["loss"]
        torch.testing.assert_close(reg - plain, 0.3 * -logp)


@pytest.mark.parametrize("on", [None, "lam", "visual_kl", "rdist", "nll"])
def test_a_jsd_loss_needs_one_term_on_and_masters_always_has_grpo(on):
    off = {"lam": 0.0, "visual_kl": 0.0, "rdist": 0.0, "nll": 0.0}
    if on is None:
        with pytest.raises(ValueError, match="trains nothing"):
            LossWeights(kind="jsd", **off)
    else:
        LossWeights(kind="jsd", **{**off, on: 0.5})
    LossWeights(kind="masters", **off)  # GRPO + beta KL remain
