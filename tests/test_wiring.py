"""The code that wires the pure functions into training, against independent references (hand
numbers, token ids, per-group statistics computed here): tests that a plausible one-line bug in
the wiring makes fail (issue: mutation-test the core)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from masters import rewards, training
from masters.forward import build_batch
from masters.losses import LossWeights, k3_kl, token_losses
from masters.prompts import decode_image, encode_prompts


def test_k3_kl_value_and_gradient_by_hand():
    # π_θ(y) = 0.5, π_ref(y) = 0.25: KL_t = π_ref/π_θ − log(π_ref/π_θ) − 1 = 0.5 + ln 2 − 1
    logp_theta = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
    logp_ref = torch.tensor([math.log(0.25)], dtype=torch.float64)
    kl = k3_kl(logp_theta, logp_ref)
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-12)  # reversed: 2 − ln 2 − 1
    kl.backward()
    # d/dlogπ_θ [e^{r−θ} − (r−θ) − 1] = 1 − π_ref/π_θ = 0.5 (reversed: π_θ/π_ref − 1 = 1)
    assert logp_theta.grad.item() == pytest.approx(0.5, abs=1e-12)


def test_token_loss_by_hand():
    # ℓ_t = −(ρ·A − β·KL) + λ·JSD with ρ = 1: A = 2, β = 0.1, KL = 0.5 + ln 2 − 1, λ = 0.5, JSD = 0.3
    logp_theta = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
    parts = token_losses(logp_theta, torch.tensor([math.log(0.25)], dtype=torch.float64),
                         torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64),
                         LossWeights(beta=0.1, lam=0.5))
    kl = 0.5 + math.log(2) - 1
    assert parts["loss"].item() == pytest.approx(-(2.0 - 0.1 * kl) + 0.5 * 0.3, abs=1e-12)
    parts["loss"].backward()
    # gradient: −A·1 + β·(1 − π_ref/π_θ) = −2 + 0.1·0.5
    assert logp_theta.grad.item() == pytest.approx(-2.0 + 0.05, abs=1e-12)


def test_response_positions_are_the_response_token_ids(processor, items):
    rows = items.iloc[[0, 7, 30]]
    vocab = len(processor.tokenizer)
    responses = [[5, 9, 11], [7], [vocab - 1, 3, 3, 4, 20]]  # unequal lengths
    batch = build_batch(processor, [decode_image(c) for c in rows["image"]], rows["question"].tolist(), responses)
    ids = batch.inputs["input_ids"]
    for i, response in enumerate(responses):
        positions = torch.nonzero(batch.predicts_response[i]).squeeze(1)
        assert ids[i, positions + 1].tolist() == response  # position t predicts the token at t + 1
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rows["question"].iloc[i]}]}],
            add_generation_prompt=True)
        assert prompt.endswith("assistant\n")
        # the token before the response is the last prompt token (the assistant header's newline)
        assert processor.tokenizer.decode(ids[i, positions[0]]) == "\n"
        assert batch.inputs["attention_mask"][i].sum().item() == positions[-1].item() + 2
    assert batch.targets.tolist() == [t for r in responses for t in r]
    assert batch.lengths == [3, 1, 5]
    # the processor's own dtypes (an integer mask, not torch's default float); ids 0 and V-1 are valid
    enc = encode_prompts(processor, [decode_image(rows["image"].iloc[0])], ["q"], "right")
    assert batch.inputs["attention_mask"].dtype == enc["attention_mask"].dtype == torch.long
    assert batch.targets.dtype == ids.dtype == torch.long
    if "mm_token_type_ids" in batch.inputs:
        assert batch.inputs["mm_token_type_ids"].dtype == enc["mm_token_type_ids"].dtype
    build_batch(processor, [decode_image(rows["image"].iloc[0])], ["q"], [[0, vocab - 1]])
    with pytest.raises(ValueError, match=rf"outside the tokenizer's {vocab} ids \(e.g. {vocab + 3}\)"):
        build_batch(processor, [decode_image(c) for c in rows["image"].iloc[:2]], ["q", "q"], [[5, vocab + 3], [vocab]])
    with pytest.raises(ValueError, match=rf"outside the tokenizer's {vocab} ids \(e.g. {vocab}\)"):  # V: one past
        build_batch(processor, [decode_image(rows["image"].iloc[0])], ["q"], [[5, vocab]])


def test_the_visual_tokens_are_the_image_grid_s_merged_patches(processor, items):
    """`batch.visual` (LLaVA-KD's visual terms) marks exactly the image placeholder positions: per
    row, the image grid's patches merged (t·h·w / merge²), each an image_token_id; a response
    holding the image or the video placeholder id is refused."""
    rows = items.iloc[[0, 7]]
    images = [decode_image(c) for c in rows["image"]]
    batch = build_batch(processor, images, rows["question"].tolist(), [[5, 9], [7]])
    merge = processor.image_processor.merge_size
    expected = [int(g.prod()) // merge**2 for g in batch.inputs["image_grid_thw"]]
    assert batch.visual.sum(dim=1).tolist() == expected and min(expected) > 0
    assert (batch.inputs["input_ids"][batch.visual] == processor.image_token_id).all()
    for placeholder in (processor.image_token_id, processor.video_token_id):
        with pytest.raises(ValueError, match=f"holds the image placeholder id {placeholder}"):
            build_batch(processor, images, rows["question"].tolist(), [[5], [placeholder]])


@pytest.fixture
def stage_parquet(tmp_path, items):
    """Two questions, groups on very different reward scales, three sources."""
    ids = items["id"].iloc[:2].tolist()
    frame = pd.DataFrame({
        "question_id": [ids[0]] * 4 + [ids[1]] * 4,
        "source": ["teacher", "teacher", "student", "label"] * 2,
        "token_ids": [[5, 6]] * 8,
        "r_total": [1.0, 2.0, 4.0, 100.0, 100.0, 300.0, 500.0, -7.0],
        "ref_logprobs": [[-1.0, -1.0]] * 8,
    })
    path = tmp_path / "stage.parquet"
    frame.to_parquet(path)
    return path, items[["id", "image", "question"]]


def _advantages(values):
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / (values.std(ddof=1) + 1e-6)


def test_advantages_are_per_group_after_the_sources_filter(stage_parquet):
    path, questions = stage_parquet
    stage = training.Stage("unused", str(path), steps=1)
    rows = training.load_stage_rows(stage, questions, ("teacher", "student"))
    assert list(rows.source) == ["teacher", "teacher", "student"] * 2  # the label rows are filtered out
    expected = np.concatenate([_advantages([1.0, 2.0, 4.0]), _advantages([100.0, 300.0, 500.0])])
    assert rows.advantage.to_numpy() == pytest.approx(expected, abs=1e-9)
    only_teacher = training.load_stage_rows(stage, questions, ("teacher",))
    assert only_teacher.advantage.to_numpy() == pytest.approx(
        np.concatenate([_advantages([1.0, 2.0]), _advantages([100.0, 300.0])]), abs=1e-9)
    assert set(rows.columns) >= {"image", "question"}


def test_every_reward_switch_by_hand():
    frame = pd.DataFrame({"question_id": [0, 0, 0, 1, 1], "divergence": [0.1, 0.3, 0.5, 0.2, 0.6],
                          "r_acc": [1.0, 0.0, 1.0, 0.0, 1.0]})
    normalized = [1.0, 0.5, 0.0, 1.0, 0.0]  # (max − D)/(max − min) within each group
    raw = [1 - d / math.log(2) for d in frame.divergence]
    cases = {
        (True, 1.0, True, True): [a + n for a, n in zip(frame.r_acc, normalized)],
        (True, 0.5, True, True): [a + 0.5 * n for a, n in zip(frame.r_acc, normalized)],
        (True, 1.0, True, False): list(frame.r_acc),
        (True, 2.0, False, True): [2.0 * n for n in normalized],
        (False, 1.0, True, True): [a + r for a, r in zip(frame.r_acc, raw)],
        (False, 0.3, False, True): [0.3 * r for r in raw],
    }
    for (normalize, alpha, use_acc, use_distill), expected in cases.items():
        out = rewards.group_rewards(frame, normalize=normalize, alpha=alpha, use_acc=use_acc, use_distill=use_distill)
        assert out.r_total.tolist() == pytest.approx(expected, abs=1e-12), (normalize, alpha, use_acc, use_distill)
        assert out.r_distill.tolist() == pytest.approx(normalized if normalize else raw, abs=1e-12)
        assert list(out.columns) == [*frame.columns, "r_distill", "r_total"] and (out.dtypes[-2:] == float).all()
    with pytest.raises(ValueError, match="'question_id' has missing values"):
        rewards.group_rewards(frame.assign(question_id=[0, None, 0, 1, 1]), normalize=True, alpha=1.0, use_acc=True,
                              use_distill=True)


def test_stage_rows_need_their_questions_and_batches_are_full_when_rows_are_few(stage_parquet):
    path, questions = stage_parquet
    stage = training.Stage("unused", str(path), steps=1)
    with pytest.raises(KeyError, match=r"stage.parquet: question ids not in the questions file: \['"):
        training.load_stage_rows(stage, questions.iloc[1:], ("teacher", "student"))
    # fewer rows than two batches: every step is a full batch of a new permutation
    for step in range(4):
        order = training.batch_order(4, 3, seed=1, stage=0, step=step)
        assert len(order) == 3 and len(set(order.tolist())) == 3
    assert training.batch_order(2, 3, seed=1, stage=0, step=5).tolist() in ([0, 1], [1, 0])  # all rows


def test_chunked_logits_cover_every_row_in_order():
    """More rows than hidden units (found by mutation testing: the bound was read off the wrong dim)."""
    from masters.forward import chunked_logits

    head = torch.nn.Linear(8, 5, bias=False)
    model = type("Stub", (), {"get_output_embeddings": lambda self: head})()
    hidden = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    chunks = list(chunked_logits(model, hidden, 6))
    assert [(p.start, p.stop) for p, _ in chunks] == [(0, 6), (6, 12), (12, 18), (18, 20)]
    torch.testing.assert_close(torch.cat([logits for _, logits in chunks]), head(hidden))
