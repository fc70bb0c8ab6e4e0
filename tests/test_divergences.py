"""DistiLLM's skew KL and skew reverse KL (masters/divergences.py; Table 5f) against float64
formulas written from the definitions, and their use as the training loss's distillation term."""

from __future__ import annotations

import pytest
import torch

from masters.divergences import DIVERGENCES, token_divergence, token_skew_kl
from masters.losses import LossWeights
from masters.rewards import token_jsd

torch.set_num_threads(1)


def direct_skew_kl(t: torch.Tensor, s: torch.Tensor, vocab: int, alpha: float, reverse: bool) -> torch.Tensor:
    """SKL_α = KL(P ‖ αP + (1−α)Q), SRKL_α = KL(Q ‖ (1−α)P + αQ), per position, float64."""
    p = torch.softmax(t[..., :vocab].double(), -1)
    q = torch.softmax(s[..., :vocab].double(), -1)
    if reverse:
        return torch.xlogy(q, q / ((1 - alpha) * p + alpha * q)).sum(-1)
    return torch.xlogy(p, p / (alpha * p + (1 - alpha) * q)).sum(-1)


def _logits(seed: int, shape_t=(2, 5, 160), shape_s=(2, 5, 128)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape_t, generator=g) * 3, torch.randn(*shape_s, generator=g) * 3


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9])
def test_skew_kl_matches_float64_with_padding_cut(alpha, reverse):
    t, s = _logits(0)
    t[..., 120:] = 1e4  # padding logits: cut before the softmax
    s[..., 120:] = -1e4
    out = token_skew_kl(t, s, alpha, reverse, vocab_size=120, chunk_size=3)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), direct_skew_kl(t, s, 120, alpha, reverse), atol=2e-5, rtol=1e-5)


def test_alpha_zero_is_the_forward_and_the_reverse_kl():
    t, s = _logits(1, (4, 50), (4, 50))
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    forward = (p * (p.log() - q.log())).sum(-1)
    backward = (q * (q.log() - p.log())).sum(-1)
    torch.testing.assert_close(token_skew_kl(t, s, 0.0).double(), forward, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(token_skew_kl(t, s, 0.0, reverse=True).double(), backward, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(forward, backward)  # the direction matters on these logits


def test_skew_kl_is_zero_for_equal_distributions_and_bounded_by_skew():
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2)) * 4
    for reverse in (False, True):
        assert token_skew_kl(x, x.clone(), 0.1, reverse).abs().max() < 1e-6
    # disjoint one-hot distributions: KL(P ‖ αP + (1−α)Q) = −log α, finite for α > 0
    a, b = torch.full((3, 16), -1e3), torch.full((3, 16), -1e3)
    a[:, 0], b[:, 1] = 0, 0
    torch.testing.assert_close(token_skew_kl(a, b, 0.1), torch.full((3,), -torch.log(torch.tensor(0.1)).item()))


def test_minus_inf_logits_stay_finite_with_gradients():
    t, s = _logits(3, (4, 32), (4, 32))
    t[:, 5] = float("-inf")
    s = s.requires_grad_(True)
    for reverse in (False, True):
        out = token_skew_kl(t, s, 0.1, reverse)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
        torch.testing.assert_close(out.detach().double(), direct_skew_kl(t.clamp_min(-1e9), s.detach(), 32, 0.1, reverse),
                                   atol=2e-5, rtol=1e-5)
        s.grad = None


@pytest.mark.parametrize("reverse", [False, True])
def test_skew_kl_gradient_matches_float64_autograd(reverse):
    t, s = _logits(4, (2, 6, 40), (2, 6, 40))
    s = s.requires_grad_(True)
    token_skew_kl(t, s, 0.1, reverse, chunk_size=4).sum().backward()
    s64 = s.detach().double().requires_grad_(True)
    direct_skew_kl(t, s64, 40, 0.1, reverse).sum().backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, atol=1e-5, rtol=1e-5)


def test_chunks_hold_at_most_chunk_size_positions(monkeypatch):
    """Never a batch x sequence x vocabulary tensor: every softmax sees one chunk of positions."""
    seen = []
    real = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda x, *a, **k: seen.append(tuple(x.shape)) or real(x, *a, **k))
    t, s = _logits(5, (3, 10, 64), (3, 10, 64))
    whole = token_skew_kl(t, s, 0.1, True, chunk_size=10_000)
    seen.clear()
    chunked = token_skew_kl(t, s, 0.1, True, chunk_size=4)
    assert seen and all(shape[0] <= 4 and len(shape) == 2 for shape in seen)
    assert len(seen) == 2 * 8  # 30 positions in 8 chunks, teacher and student each
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_token_divergence_dispatches_by_kind():
    t, s = _logits(6, (5, 30), (5, 30))
    assert DIVERGENCES == ("jsd", "skl", "srkl", "kl", "rkl")
    assert torch.equal(token_divergence("kl", t, s, 0.3), token_skew_kl(t, s, 0.0))
    assert torch.equal(token_divergence("rkl", t, s, 0.3), token_skew_kl(t, s, 0.0, reverse=True))
    assert torch.equal(token_divergence("jsd", t, s), token_jsd(t, s))
    assert torch.equal(token_divergence("skl", t, s, 0.3), token_skew_kl(t, s, 0.3))
    assert torch.equal(token_divergence("srkl", t, s, 0.3), token_skew_kl(t, s, 0.3, reverse=True))
    assert not torch.allclose(token_divergence("skl", t, s, 0.3), token_divergence("srkl", t, s, 0.3))
    with pytest.raises(ValueError, match="divergence must be one of"):
        token_divergence("mse", t, s)
    with pytest.raises(ValueError, match=r"skew alpha must be in \[0, 1\)"):
        token_skew_kl(t, s, 1.0)
    for skew in (-0.1, 1.0, 1.5):  # [0, 1): α = 1 would mix in nothing of the other distribution
        with pytest.raises(ValueError, match="skew must be in"):
            LossWeights(divergence="srkl", skew=skew)
    assert LossWeights(divergence="skl", skew=0.0).skew == 0.0  # α = 0: the plain KL
    with pytest.raises(ValueError, match="divergence must be one of"):
        LossWeights(divergence="mse")


@pytest.mark.parametrize("kind", ["jsd", "masters"])
def test_the_training_loss_takes_the_divergence_in_place_of_the_jsd(kind):
    """One chunk of the training loss (masters.training._chunk_terms) with DistiLLM's SRKL as the
    distillation term: the term is the float64 SRKL of the chunk, weighted by λ, the rest unchanged."""
    from masters.training import TrainConfig, _chunk_terms

    g = torch.Generator().manual_seed(7)
    s_logits, t_logits = torch.randn(6, 48, generator=g) * 2, torch.randn(6, 64, generator=g) * 2
    targets, ref, adv = torch.randint(0, 40, (6,), generator=g), torch.randn(6, generator=g) - 3, torch.randn(6, generator=g)
    weights = LossWeights(beta=0.1, lam=0.5, kind=kind, divergence="srkl", skew=0.2)
    terms = _chunk_terms(s_logits, t_logits, targets, ref, adv, TrainConfig(weights=weights, chunk_size=4), vocab=40)
    srkl = direct_skew_kl(t_logits, s_logits, 40, 0.2, reverse=True)
    torch.testing.assert_close(terms["jsd"].double(), srkl, atol=2e-5, rtol=1e-5)
    jsd_terms = _chunk_terms(s_logits, t_logits, targets, ref, adv,
                             TrainConfig(weights=LossWeights(beta=0.1, lam=0.5, kind=kind), chunk_size=4), vocab=40)
    torch.testing.assert_close(terms["loss"] - 0.5 * terms["jsd"], jsd_terms["loss"] - 0.5 * jsd_terms["jsd"])
    assert not torch.allclose(terms["jsd"], jsd_terms["jsd"])
