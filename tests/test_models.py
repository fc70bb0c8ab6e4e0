"""Tiny VLMs: stock architectures, Auto-class round trip, sampling, response-token logits."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from masters.checkpoints import save_checkpoint
from masters.prompts import decode_image, encode_prompts, prompt_messages
from masters.world import models
from tests.conftest import TINY

PAPER_SAMPLING = dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.05)


def _batch(processor, items, n=2):
    rows = items.iloc[:n]
    return encode_prompts(processor, [decode_image(c) for c in rows.image], rows.question, "left")


@pytest.mark.parametrize("architecture", sorted(models.ARCHITECTURES))
def test_save_load_through_auto_classes_without_remote_code(architecture, tokenizer, items, tmp_path):
    image_size = 2 * models.image_multiple(architecture)
    processor = models.build_processor(tokenizer, architecture, image_size)
    model = models.build_model(architecture, models.ModelSize(**TINY, vocab_multiple=64), tokenizer, seed=0)
    save_checkpoint(model, processor, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.py"))
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=False)
    loaded_proc = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=False)
    assert type(loaded).__name__ == type(model).__name__
    image = decode_image(items.image.iloc[0]).resize((image_size, image_size))
    text = loaded_proc.apply_chat_template(prompt_messages("Q?"), add_generation_prompt=True)
    enc = loaded_proc(images=[image], text=[text], return_tensors="pt")
    assert int((enc["input_ids"] == loaded.config.image_token_id).sum()) == (image_size // models.image_multiple(architecture)) ** 2
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)


def test_embedding_padding_differs_with_vocab_multiple(tokenizer):
    widths = {m: models.build_config("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=m), tokenizer).text_config.vocab_size
              for m in (64, 128)}
    assert all(w >= len(tokenizer) and w % m == 0 for m, w in widths.items())
    assert models.padded_vocab(len(tokenizer), 64) == widths[64]
    assert models.padded_vocab(401, 64) == 448 and models.padded_vocab(401, 128) == 512


def test_generate_with_paper_sampling_8_sequences(tiny_model, processor, items):
    enc = _batch(processor, items, n=1)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(tiny_model.generate(**enc, **PAPER_SAMPLING, num_return_sequences=8, max_new_tokens=12))
    assert outs[0].shape[0] == 8 and outs[0].shape[1] > enc["input_ids"].shape[1]
    assert torch.equal(outs[0], outs[1]), "seeded sampling must be reproducible"
    assert len({tuple(r.tolist()) for r in outs[0]}) > 1, "temperature-1 sampling of 8 sequences gave 8 copies"


def test_forward_gives_response_token_logits_matching_generation(tiny_model, processor, items):
    enc = _batch(processor, items, n=2)
    gen = tiny_model.generate(**enc, do_sample=False, max_new_tokens=6, output_scores=True,
                              return_dict_in_generate=True)
    prompt_len = enc["input_ids"].shape[1]
    response = gen.sequences[:, prompt_len:]
    full = dict(enc)
    full["input_ids"] = gen.sequences
    full["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(response)], dim=1)
    full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    with torch.no_grad():
        logits = tiny_model(**full).logits
    # logits at position t predict token t+1: the response's logits start one before it.
    response_logits = logits[:, prompt_len - 1 : -1]
    assert response_logits.shape == (2, response.shape[1], tiny_model.config.text_config.vocab_size)
    scores = torch.stack(gen.scores, dim=1)
    torch.testing.assert_close(response_logits, scores, atol=1e-4, rtol=1e-4)
