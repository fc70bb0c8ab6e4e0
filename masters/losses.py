"""The Masters training objective (METHOD.md §6; paper Eq. 8, App. B Eq. 9–11).

Per response token t of response j (advantage A_j):

    ℓ_t = −(ρ_t·A_j − β·KL_t) + λ·JSD_t

* ρ_t = exp(log π_θ(y_t) − stopgrad(log π_θ(y_t))): equal to 1, but its gradient is
  ∇log π_θ(y_t), so the policy term's gradient is −A_j·∇log π_θ(y_t) (Eq. 11: the
  clipped surrogate is redundant because π_θ_old = π_θ offline);
* KL_t = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1, the k3 estimator of
  KL(π_θ ‖ π_ref) (≥ 0, zero when θ = ref);
* JSD_t between the stage's masked teacher T_{r_k} and the current student π_θ (Eq. 4),
  with the gradient through the student.

Loss = mean of ℓ_t over all response tokens of the batch. The ``jsd`` variant (naive,
mask-progressive and multi-response distillation, METHOD.md §7) keeps only λ·JSD_t. Table 5f
puts another distillation objective in the JSD's place (``LossWeights.divergence``: DistiLLM's
skew KL or skew reverse KL, :mod:`masters.divergences`); the ``jsd`` tensors below then hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from masters.config import default
from masters.divergences import DIVERGENCES

LOSS_KINDS = ("jsd", "masters")


@dataclass(frozen=True)
class LossWeights:
    beta: float = default("training.beta")  # KL to the reference
    lam: float = default("training.lam")  # JSD distillation term
    kind: str = "masters"  # "masters" (GRPO + β·KL + λ·JSD) or "jsd" (λ·JSD only)
    # the distillation term in place of the JSD (masters.divergences; Table 5f) and its skew α
    divergence: str = default("training.divergence")
    skew: float = default("training.skew")
    # LLaVA-KD's terms (masters.llava_kd): visual MDist, RDist, and the autoregressive L_reg
    visual_kl: float = default("training.visual_kl")
    rdist: float = default("training.rdist")
    nll: float = default("training.nll")

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0 <= self.skew < 1:
            raise ValueError(f"skew must be in [0, 1), got {self.skew}")
        if min(self.visual_kl, self.rdist, self.nll) < 0:
            raise ValueError(f"visual_kl, rdist and nll must be >= 0, got {self.visual_kl}, {self.rdist}, {self.nll}")
        if self.beta < 0 or self.lam < 0:
            raise ValueError(f"beta and lam must be >= 0, got beta={self.beta}, lam={self.lam}")
        if self.kind == "jsd" and not (self.lam or self.visual_kl or self.rdist or self.nll):
            raise ValueError("loss kind jsd with lam, visual_kl, rdist and nll all 0 trains nothing")

    @property
    def visual(self) -> bool:
        """Whether a visual-token term (LLaVA-KD's visual MDist or RDist) is on."""
        return self.visual_kl > 0 or self.rdist > 0


def k3_kl(logp_theta: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """KL_t = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1 (per token)."""
    diff = logp_ref - logp_theta
    return torch.exp(diff) - diff - 1.0


def policy_ratio(logp_theta: torch.Tensor) -> torch.Tensor:
    """ρ_t = exp(log π_θ − stopgrad(log π_θ)): value 1, gradient ∇log π_θ."""
    return torch.exp(logp_theta - logp_theta.detach())


def token_losses(
    logp_theta: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    jsd: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """ℓ_t and its parts, all ``[N]`` over the batch's response tokens.

    ``advantages`` holds each token's response advantage A_j (repeated over its tokens).
    """
    if not (logp_theta.shape == logp_ref.shape == advantages.shape == jsd.shape):
        raise ValueError(
            f"per-token tensors must share one shape, got {tuple(logp_theta.shape)}, {tuple(logp_ref.shape)}, "
            f"{tuple(advantages.shape)}, {tuple(jsd.shape)}"
        )
    # LLaVA-KD's L_reg, −log π_θ(y_t), when asked for (nll 0: the loss is exactly Eq. 8's)
    reg = weights.nll * -logp_theta if weights.nll else 0.0
    if weights.kind == "jsd":
        zero = torch.zeros_like(jsd)
        return {"loss": weights.lam * jsd + reg, "pg": zero, "kl": zero.detach(), "jsd": jsd}
    pg = policy_ratio(logp_theta) * advantages
    kl = k3_kl(logp_theta, logp_ref)
    return {"loss": -(pg - weights.beta * kl) + weights.lam * jsd + reg, "pg": pg, "kl": kl, "jsd": jsd}


def masters_loss(
    logp_theta: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    jsd: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch loss (mean of ℓ_t over all response tokens) and detached term means for logs."""
    parts = token_losses(logp_theta, logp_ref, advantages, jsd, weights)
    loss = parts["loss"].mean()
    stats = {name: float(value.detach().mean()) for name, value in parts.items()}
    return loss, stats
