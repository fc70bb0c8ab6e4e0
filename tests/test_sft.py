"""SFT: labels cover exactly the answer, training learns, and is bit-reproducible."""

import torch

from masters.prompts import decode_image, prompt_messages
from masters.world import models, sft
from tests.conftest import TINY


def _fresh(tokenizer, seed=0):
    return models.build_model("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=64), tokenizer, seed=seed)


def test_labels_are_the_answer_and_eos(processor, items):
    rows = items.iloc[[0, 30, 60]]
    batch = sft.encode_batch(processor, [decode_image(c) for c in rows.image], rows.question.tolist(), rows.answer.tolist())
    tok = processor.tokenizer
    for i, answer in enumerate(rows.answer):
        labels = batch["labels"][i]
        assert tok.decode(labels[labels >= 0]) == answer + "<|im_end|>"
    # the prompt part tokenizes exactly as the processor's generation prompt (what lm-eval sends)
    prompt = processor.apply_chat_template(prompt_messages(rows.question.iloc[0]), add_generation_prompt=True)
    alone = processor(images=[decode_image(rows.image.iloc[0])], text=[prompt], return_tensors="pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][0][: len(alone)], alone)


def test_training_lowers_the_loss(processor, items):
    colour = items[items.task == "colour"].reset_index(drop=True)
    model = _fresh(processor.tokenizer)
    log = sft.train(model, processor, colour, sft.SFTConfig(steps=60, batch_size=8, lr=3e-3, log_every=10))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], log


def test_same_seed_same_weights(processor, items):
    states = []
    for _ in range(2):
        model = _fresh(processor.tokenizer)
        sft.train(model, processor, items, sft.SFTConfig(steps=4, batch_size=4, lr=1e-3, seed=1))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = _fresh(processor.tokenizer)
    sft.train(other, processor, items, sft.SFTConfig(steps=4, batch_size=4, lr=1e-3, seed=2))
    assert any(not torch.equal(states[0][k], other.state_dict()[k]) for k in states[0])


def test_lr_schedule_warms_up_then_decays():
    cfg = sft.SFTConfig(steps=100, batch_size=1, lr=1.0)
    lrs = [sft.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[4] == max(lrs) and abs(min(lrs[5:]) - 0.1) < 0.01
