"""LLaVA-KD (Cai et al., 2024; ../shared/seeds/004): its distillation losses and its three-stage
recipe, as pure functions over tensors and a stock HF VLM (Table 5f's LLaVA-KD rows).

MDist (Eq. 2-3): the forward KL from the teacher's next-token distribution to the student's,

    L_res = Σ_m KL(φ_l(·|y_<m) ‖ φ_s(·|y_<m))   over the M response tokens,
    L_vis = Σ_k KL(φ_l(·|y_<k) ‖ φ_s(·|y_<k))   over the K visual tokens (the LM head's
                                                distributions at the image placeholders' positions),

both the ``kl`` divergence of :mod:`masters.divergences` (DistiLLM's skew KL at α = 0).

RDist (Eq. 4-5): the self-correlation of the LLM's output states at the N_p visual tokens,
R = Y·Yᵀ ∈ R^{N_p×N_p}, matched by cosine similarity of the flattened matrices,

    L_rel = 1 − <R_s, R_t> / (‖R_s‖·‖R_t‖),

which compares teacher and student of different hidden sizes (R has the tokens' shape only) and
is unchanged by any rotation or positive scaling of either model's states.

The recipe (Sec. 3.3.2): DPT (distilled pre-training: only the projector trains; L_reg + α·L_res
+ β·L_vis + γ·L_rel on caption data), SFT (projector and LLM; L_reg on instruction data), DFT
(distilled fine-tuning: projector and LLM; L_reg + α'·L_res + β'·L_vis + γ'·L_rel on the SFT data).
The vision encoder never trains. Weights from its paper (Sec. 4.1): α = β = 1.0, γ = 0.5 in
both DPT and DFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from masters.divergences import token_divergence

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LlavaKDWeights:
    """α (response MDist), β (visual MDist), γ (RDist) of Eq. 6-7; the paper's values."""

    res: float = 1.0
    vis: float = 1.0
    rel: float = 0.5


@dataclass(frozen=True)
class RecipeStage:
    """One stage of LLaVA-KD's recipe: which parts train and which losses it adds to L_reg."""

    name: str
    trains: tuple[str, ...]  # parts of the model (see MODEL_PARTS)
    distill: bool  # MDist + RDist added to the autoregressive loss
    data: str  # what the paper trains it on


#: DPT -> SFT -> DFT (Sec. 3.3.2; data as in Sec. 4.1). The vision encoder is frozen in all three.
RECIPE = (
    RecipeStage("dpt", ("projector",), True, "LLaVA1.5-558k captions"),
    RecipeStage("sft", ("projector", "llm"), False, "LLaVA-mix-665k instructions"),
    RecipeStage("dft", ("projector", "llm"), True, "LLaVA-mix-665k instructions"),
)

#: Parameter-name prefixes of each part, for the stock HF VLMs of this workflow: Qwen2-VL,
#: Qwen2.5-VL, Qwen3-VL (``model.visual.merger`` and Qwen3-VL's ``deepstack_merger_list`` project
#: the vision tokens), InternVL (``model.multi_modal_projector``, ``model.vision_tower``).
MODEL_PARTS = {
    "projector": ("model.visual.merger.", "model.visual.deepstack_merger_list.", "model.multi_modal_projector."),
    "vision": ("model.visual.", "model.vision_tower."),
    "llm": ("model.language_model.", "lm_head."),
}


def part_of(name: str) -> str:
    """The part (``projector``, ``vision`` or ``llm``) a parameter name belongs to."""
    for part in ("projector", "vision", "llm"):  # the projector first: it lies inside model.visual
        if name.startswith(MODEL_PARTS[part]):
            return part
    raise ValueError(f"parameter {name!r} is in none of {sorted(MODEL_PARTS)}: not a supported VLM layout")


def freeze(model, parts: Sequence[str]) -> list[str]:
    """Freeze the parameters of ``parts`` (``requires_grad`` False), train all others; returns
    the names that train. No parts: nothing changes (any layout)."""
    if not parts:
        return [name for name, param in model.named_parameters() if param.requires_grad]
    unknown = set(parts) - set(MODEL_PARTS)
    if unknown:
        raise ValueError(f"parts {sorted(unknown)} are none of {sorted(MODEL_PARTS)}")
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) not in parts)
        if param.requires_grad:
            names.append(name)
    return names


def trainable_parameters(model, stage: str) -> list[str]:
    """Set ``requires_grad`` for ``stage`` of :data:`RECIPE` (its parts train, the rest is frozen);
    returns the names that train."""
    recipe = {s.name: s for s in RECIPE}
    if stage not in recipe:
        raise ValueError(f"LLaVA-KD stage must be one of {list(recipe)}, got {stage!r}")
    return freeze(model, [part for part in MODEL_PARTS if part not in recipe[stage].trains])


def mdist(teacher_logits: torch.Tensor, student_logits: torch.Tensor, vocab_size: int | None = None,
          chunk_size: int = 256) -> torch.Tensor:
    """Forward KL per position (Eq. 2 for response positions, Eq. 3 for visual ones): ``[..., T]``."""
    return token_divergence("kl", teacher_logits, student_logits, vocab_size=vocab_size, chunk_size=chunk_size)


def relation_matrix(states: torch.Tensor) -> torch.Tensor:
    """R = Y·Yᵀ (Eq. 4) of one sample's visual-token states ``[N_p, d]``, in float32: ``[N_p, N_p]``."""
    y = states.float()
    return y @ y.transpose(-1, -2)


def rdist(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_rel (Eq. 5) per sample: 1 − cosine similarity of the flattened self-correlation matrices of
    the student's ``[N_p, d_s]`` and the teacher's ``[N_p, d_t]`` visual-token states (the same
    N_p per sample, any hidden sizes). Returns float32 ``[B]``; differentiable w.r.t. both."""
    import torch

    if len(student_states) != len(teacher_states):
        raise ValueError(f"{len(student_states)} student samples for {len(teacher_states)} teacher samples")
    out = []
    for i, (s, t) in enumerate(zip(student_states, teacher_states)):
        if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
            raise ValueError(f"sample {i}: visual states must be [N_p, d] with one N_p, got {tuple(s.shape)} and "
                             f"{tuple(t.shape)} (do teacher and student see the image as the same tokens?)")
        r_s, r_t = relation_matrix(s).flatten(), relation_matrix(t).flatten()
        out.append(1.0 - torch.nn.functional.cosine_similarity(r_s, r_t, dim=0, eps=1e-12))
    return torch.stack(out) if out else torch.zeros(0)


def llava_kd_loss(reg: torch.Tensor, res: torch.Tensor, vis: torch.Tensor, rel: torch.Tensor,
                  weights: LlavaKDWeights = LlavaKDWeights()) -> torch.Tensor:
    """Eq. 6/7: L_reg + α·L_res + β·L_vis + γ·L_rel, each term already reduced to a scalar
    (the means over response tokens, visual tokens and samples)."""
    return reg + weights.res * res + weights.vis * vis + weights.rel * rel
