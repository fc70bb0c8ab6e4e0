"""LLaVA-KD's losses and recipe (masters/llava_kd.py) on hand-made states and a tiny stock VLM."""

from __future__ import annotations

import math

import pytest
import torch

from masters import llava_kd
from masters.divergences import token_skew_kl

torch.set_num_threads(1)


def direct_rel(s: torch.Tensor, t: torch.Tensor) -> float:
    """Eq. 4-5 in float64: 1 − <R_s, R_t> / (‖R_s‖ ‖R_t‖), R = Y Yᵀ."""
    r_s, r_t = s.double() @ s.double().T, t.double() @ t.double().T
    return 1.0 - float((r_s * r_t).sum() / (r_s.norm() * r_t.norm()))


def test_rdist_by_hand():
    # two visual tokens: the student's orthogonal, the teacher's parallel
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # R_s = I
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # R_t = all ones
    # <I, J> = 2, ‖I‖ = √2, ‖J‖ = 2 -> cos = 1/√2
    out = llava_kd.rdist([s], [t])
    assert out.shape == (1,) and out.dtype == torch.float32
    assert out.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert llava_kd.rdist([s], [s.clone()]).item() == pytest.approx(0.0, abs=1e-6)


def test_rdist_ignores_hidden_size_rotation_and_scale_and_matches_float64():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(9, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    t = 3.0 * torch.cat([s, torch.zeros(9, 4)], dim=1) @ q  # wider, rotated, scaled: the same relations
    assert llava_kd.rdist([s], [t]).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(9, 16, generator=g)
    batch = llava_kd.rdist([s, other[:5]], [other, t[:5]])
    assert batch.shape == (2,)
    assert batch[0].item() == pytest.approx(direct_rel(s, other), abs=1e-5)
    assert batch[1].item() == pytest.approx(direct_rel(other[:5], t[:5]), abs=1e-5)
    assert 0.0 < batch[0].item() <= 2.0


def test_rdist_gradient_matches_float64_and_checks_shapes():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    t = torch.randn(6, 7, generator=g)
    llava_kd.rdist([s], [t]).sum().backward()
    s64 = s.detach().double().requires_grad_(True)
    r_s, r_t = s64 @ s64.T, t.double() @ t.double().T
    (1 - (r_s * r_t).sum() / (r_s.norm() * r_t.norm())).backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="the same tokens"):
        llava_kd.rdist([torch.zeros(4, 3)], [torch.zeros(5, 3)])
    with pytest.raises(ValueError, match="student samples"):
        llava_kd.rdist([torch.zeros(4, 3)], [])


def test_mdist_is_the_forward_kl_teacher_to_student():
    g = torch.Generator().manual_seed(2)
    t, s = torch.randn(2, 7, 50, generator=g) * 2, torch.randn(2, 7, 40, generator=g) * 2
    p, q = torch.softmax(t[..., :40].double(), -1), torch.softmax(s.double(), -1)
    forward = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(llava_kd.mdist(t, s, vocab_size=40, chunk_size=3).double(), forward,
                               atol=2e-5, rtol=1e-5)
    assert torch.equal(llava_kd.mdist(t, s, 40), token_skew_kl(t, s, 0.0, vocab_size=40))


def test_the_recipe_trains_the_projector_then_the_llm_never_the_vision_encoder(tiny_model):
    parts = {name: llava_kd.part_of(name) for name, _ in tiny_model.named_parameters()}
    assert set(parts.values()) == {"projector", "vision", "llm"}
    assert all(p == "projector" for n, p in parts.items() if ".merger." in n)
    assert parts["lm_head.weight"] == "llm"
    trained = {s.name: set(llava_kd.trainable_parameters(tiny_model, s.name)) for s in llava_kd.RECIPE}
    assert [s.name for s in llava_kd.RECIPE] == ["dpt", "sft", "dft"]
    assert trained["dpt"] == {n for n, p in parts.items() if p == "projector"}
    assert trained["sft"] == trained["dft"] == {n for n, p in parts.items() if p != "vision"}
    frozen = {n for n, p in tiny_model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in parts.items() if p == "vision"}  # requires_grad set for the last stage
    assert [s.distill for s in llava_kd.RECIPE] == [True, False, True]
    with pytest.raises(ValueError, match="stage must be one of"):
        llava_kd.trainable_parameters(tiny_model, "pt")
    with pytest.raises(ValueError, match="not a supported VLM layout"):
        llava_kd.part_of("encoder.layer.0.weight")
    for p in tiny_model.parameters():  # the session's shared model: leave it as it was
        p.requires_grad_(True)


def test_a_stage_without_frozen_parts_trains_every_parameter_again(tiny_model):
    """masters.training.set_trainable between stages: a stage that freezes the vision encoder, then
    one that freezes nothing, leaves every parameter training (not the previous stage's freeze)."""
    from masters.training import set_trainable

    vision = {n for n, _ in tiny_model.named_parameters() if llava_kd.part_of(n) == "vision"}
    set_trainable(tiny_model, ("vision",))
    assert {n for n, p in tiny_model.named_parameters() if not p.requires_grad} == vision
    set_trainable(tiny_model, ())
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_the_objective_weighs_its_terms_as_the_paper():
    one = torch.tensor(1.0)
    w = llava_kd.LlavaKDWeights()
    assert (w.res, w.vis, w.rel) == (1.0, 1.0, 0.5)
    assert llava_kd.llava_kd_loss(one, 2 * one, 3 * one, 4 * one).item() == 1 + 2 + 3 + 0.5 * 4
    assert llava_kd.llava_kd_loss(one, one, one, one, llava_kd.LlavaKDWeights(0, 0, 0)).item() == 1


def test_the_workflows_llava_kd_runs_weigh_their_terms_with_the_papers_weights():
    """config.yaml's LLaVA-KD experiments (Table 5f) carry llava_kd.LlavaKDWeights, the paper's α, β,
    γ, as the loss's lam (MDist on the response), visual_kl and rdist; the recipe's DFT stage too."""
    import yaml

    from masters.experiments import Design
    from tests.conftest import REPO

    design = Design(yaml.safe_load((REPO / "config.yaml").read_text()))
    w = llava_kd.LlavaKDWeights()
    for name in ("llava_kd", "llava_kd_masters", "llava_kd_recipe"):
        t = design.experiments[name].training
        assert (t["divergence"], t["lam"], t["visual_kl"], t["rdist"]) == ("kl", w.res, w.vis, w.rel), name
    assert design.stages("S", "llava_kd_recipe")[-1].settings() == {}  # its DFT: the run's own weights
