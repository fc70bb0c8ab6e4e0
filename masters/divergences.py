"""Token-level divergences for the distillation term of the training loss (λ·D_t in Eq. 8).

Masters uses the JSD of Eq. 4 (:func:`masters.rewards.token_jsd`). Table 5f applies Masters on
top of other distillation objectives; DistiLLM (Ko et al., ICML 2024, "DistiLLM: Towards
Streamlined Distillation for Large Language Models", Eq. 4-5) replaces the KL with its α-skew
versions, P the teacher's next-token distribution and Q_θ the student's:

    SKL_α(P, Q_θ)  = KL(P   ‖ α·P + (1 − α)·Q_θ)        (skew KL)
    SRKL_α(P, Q_θ) = KL(Q_θ ‖ (1 − α)·P + α·Q_θ)        (skew reverse KL)

α = 0 gives the forward KL(P‖Q_θ) and the reverse KL(Q_θ‖P); DistiLLM's α is 0.1. The mixture's
share of the divergence's own first argument keeps it finite where the other distribution is 0.

Every function here returns one float32 value per position, computed ``chunk_size`` positions at a
time through :func:`masters.rewards.per_position` (never a batch × sequence × vocabulary tensor),
both logits cut to the tokenizer's ``vocab_size`` before the softmax, differentiable through both.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from masters.rewards import per_position, token_jsd

if TYPE_CHECKING:
    import torch

#: The divergences the training loss can use (config ``training.divergence``): the JSD, DistiLLM's
#: skew KL and skew reverse KL, and the plain forward KL (LLaVA-KD's MDist) and reverse KL.
DIVERGENCES = ("jsd", "skl", "srkl", "kl", "rkl")


def _chunk_skew_kl(t: torch.Tensor, s: torch.Tensor, alpha: float, reverse: bool) -> torch.Tensor:
    """SKL_α (``reverse`` False) or SRKL_α per row of two [n, V] logit blocks, in float32."""
    import torch

    lp = torch.log_softmax(t.float(), dim=-1)
    lq = torch.log_softmax(s.float(), dim=-1)
    tiny = torch.finfo(torch.float32).min  # -inf logits: 0·(-inf) would be nan (see _chunk_jsd)
    lp, lq = lp.clamp_min(tiny), lq.clamp_min(tiny)
    first, other = (lq, lp) if reverse else (lp, lq)  # KL(first ‖ α·first + (1 − α)·other)
    log_alpha = math.log(alpha) if alpha > 0 else -math.inf
    lm = torch.logaddexp(first + log_alpha, other + math.log1p(-alpha))
    return (first.exp() * (first - lm)).sum(-1)


def token_skew_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, alpha: float = 0.1,
                  reverse: bool = False, vocab_size: int | None = None, chunk_size: int = 256) -> torch.Tensor:
    """Per-position SKL_α(P, Q_θ), or SRKL_α with ``reverse``, between the teacher's ``[..., T, V_t]``
    and the student's ``[..., T, V_s]`` logits; float32 ``[..., T]``. ``alpha`` in [0, 1)."""
    if not 0 <= alpha < 1:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    fn = partial(_chunk_skew_kl, alpha=alpha, reverse=reverse)
    return per_position(fn, teacher_logits, student_logits, vocab_size, chunk_size)


def token_divergence(kind: str, teacher_logits: torch.Tensor, student_logits: torch.Tensor, skew: float = 0.1,
                     vocab_size: int | None = None, chunk_size: int = 256) -> torch.Tensor:
    """The distillation term D_t of ``kind`` (:data:`DIVERGENCES`) per position; ``skew`` is the
    α of ``skl`` / ``srkl`` (``kl`` / ``rkl``: α = 0)."""
    if kind == "jsd":
        return token_jsd(teacher_logits, student_logits, vocab_size, chunk_size)
    if kind in ("skl", "srkl"):
        return token_skew_kl(teacher_logits, student_logits, skew, kind == "srkl", vocab_size, chunk_size)
    if kind in ("kl", "rkl"):
        return token_skew_kl(teacher_logits, student_logits, 0.0, kind == "rkl", vocab_size, chunk_size)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}")
