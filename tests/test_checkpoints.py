"""The core works for any stock HF VLM, not only the tiny world's: tiny random Qwen2.5-VL,
Qwen3-VL and InternVL (``-HF`` layout) checkpoints are saved, reloaded without remote code,
prompted, teacher-forced and sampled through the same functions paper scale uses."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from masters import checkpoints, forward, generation, prompts
from masters.world import models as world_models
from masters.world import vqa
from tests.conftest import TINY

# InternVL3.5-HF's tokens and chat turn format (an image is "<IMG_CONTEXT>\n", which the
# processor expands to "<img>" + image_seq_length × "<IMG_CONTEXT>" + "</img>").
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE = 56


def _internvl(corpus):
    """A tiny InternVL (Qwen3 text, InternViT vision) with its own tokenizer and stock processor."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *INTERNVL_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                               extra_special_tokens=INTERNVL_TOKENS)
    tok.chat_template = INTERNVL_TEMPLATE
    seq = (IMAGE // 14 // 2) ** 2  # patches per side, halved by the pixel shuffle (downsample_ratio 0.5)
    processor = transformers.InternVLProcessor(
        image_processor=transformers.GotOcr2ImageProcessor(size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tok, video_processor=transformers.InternVLVideoProcessor(size={"height": IMAGE, "width": IMAGE}),
        image_seq_length=seq, chat_template=INTERNVL_TEMPLATE)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    text = dict(model_type="qwen3", vocab_size=320, hidden_size=TINY["hidden_size"], num_hidden_layers=1,
                intermediate_size=TINY["intermediate_size"], num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                tie_word_embeddings=False, eos_token_id=eos, pad_token_id=pad, bos_token_id=pad)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64,
                  image_size=IMAGE, patch_size=14)
    config = transformers.InternVLConfig(text_config=text, vision_config=vision, image_seq_length=seq,
                                         image_token_id=tok.context_image_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    return model, processor


def _qwen(architecture, tokenizer):
    """A tiny Qwen VL of the world's helpers; Qwen3-VL with a deepstack layer, as the real ones."""
    config = world_models.build_config(architecture, world_models.ModelSize(**TINY, vocab_multiple=64), tokenizer)
    if architecture == "qwen3_vl":
        config.vision_config.deepstack_visual_indexes = [0]
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    size = 2 * world_models.image_multiple(architecture)
    return model, world_models.build_processor(tokenizer, architecture, size)


@pytest.fixture(scope="module")
def questions():
    rows = vqa.generate("colour", "test", 2, seed=0, image_size=IMAGE)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "internvl"])
def saved(request, tokenizer, questions, tmp_path_factory):
    """``(directory, model_type)`` of a tiny random checkpoint saved by the core."""
    if request.param == "internvl":
        model, processor = _internvl(questions["question"].tolist() * 5)
    else:
        model, processor = _qwen(request.param, tokenizer)
    out = tmp_path_factory.mktemp(request.param)
    checkpoints.save_checkpoint(model, processor, out)
    return out, request.param


def test_round_trip_without_remote_code(saved):
    path, model_type = saved
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")) and not list(path.glob("*.py"))
    model, processor = checkpoints.load_checkpoint(path)
    assert model.config.model_type == model_type
    assert type(model).__name__ == checkpoints.MODEL_TYPES[model_type]
    assert processor.chat_template is not None


def test_prompt_forward_and_generation_line_up(saved, questions):
    """Greedy generation through the HF backend, then the teacher-forced forward pass over its
    responses: the positions that predict a response token hold exactly the generated ids,
    and the argmax of the chunked logits there is what greedy decoding picked."""
    path, _ = saved
    backend = generation.HFBackend(path)
    model, processor = backend.model, backend.processor
    params = generation.SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=4)
    completions = [c[0] for c in backend.generate(questions, params, seed=0)]
    vocab = len(processor.tokenizer)
    assert all(c.token_ids and max(c.token_ids) < vocab for c in completions)
    responses = [c.token_ids for c in completions]

    images = [prompts.decode_image(c) for c in questions["image"]]
    enc = prompts.encode_prompts(processor, images, questions["question"], "right")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) > 0, "image placeholders expanded"
    batch = forward.build_batch(processor, images, questions["question"].tolist(), responses)
    ids = batch.inputs["input_ids"]
    for i, response in enumerate(responses):
        positions = torch.nonzero(batch.predicts_response[i]).squeeze(1)
        assert ids[i, positions + 1].tolist() == response
        assert processor.tokenizer.decode(ids[i, : positions[0] + 1]).endswith("assistant\n")
    with torch.no_grad():
        hidden = forward.response_hidden_states(model, batch)
        assert hidden.shape == (len(batch.targets), model.get_output_embeddings().in_features)
        logits = torch.cat([part for _, part in forward.chunked_logits(model, hidden, chunk_size=3)])
        full = model(**batch.inputs, use_cache=False).logits[batch.predicts_response]
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, full.float(), atol=1e-4, rtol=1e-4)
    assert logits[:, :vocab].argmax(dim=1).tolist() == batch.targets.tolist()


def test_unsupported_families_are_refused_by_name():
    checkpoints.check_model_type("internvl", "x")
    with pytest.raises(ValueError, match="'llava' is not supported"):
        checkpoints.check_model_type("llava", "x")
    with pytest.raises(ValueError, match="-HF conversion"):
        checkpoints.check_model_type("internvl_chat", "OpenGVLab/InternVL3_5-8B")


def test_special_ids_come_from_the_model_and_its_tokenizer():
    from types import SimpleNamespace as NS

    tok = NS(pad_token_id=None, eos_token_id=7)
    assert prompts.pad_token_id(tok) == 7 and prompts.pad_token_id(NS(pad_token_id=0, eos_token_id=7)) == 0
    with_list = NS(generation_config=NS(eos_token_id=[151645, 151643]))  # Qwen2.5-VL-Instruct's
    assert prompts.eos_token_ids(with_list, tok) == {151645, 151643}
    assert prompts.eos_token_ids(NS(generation_config=NS(eos_token_id=None)), tok) == {7}
    with pytest.raises(ValueError):
        prompts.pad_token_id(NS(pad_token_id=None, eos_token_id=None))


def test_paper_scale_modules_do_not_import_the_world():
    code = ("import sys, masters.forward, masters.generation, masters.training, masters.rewards, masters.judge, "
            "masters.evaluation, masters.masking, masters.checkpoints, masters.prompts, masters.cli\n"
            "masters.cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith('masters.world')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_decode_image_gives_rgb_whatever_the_stored_mode():
    import io

    from PIL import Image

    from masters.prompts import decode_image

    for mode in ("L", "RGBA", "P"):
        buf = io.BytesIO()
        Image.new(mode, (4, 3)).save(buf, format="PNG")
        image = decode_image({"bytes": buf.getvalue()})
        assert image.mode == "RGB" and image.size == (4, 3), mode


def test_prompt_turn_is_hf_typed_content_and_texts_come_from_the_chat_template():
    from masters.prompts import prompt_messages, prompt_texts

    assert prompt_messages("How many?") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]

    class Processor:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, add_generation_prompt):
            assert add_generation_prompt is True
            return f"<{messages[0]['role']}>{messages[0]['content'][1]['text']}<assistant>"

    assert prompt_texts(Processor(), ["a?", "b?"]) == ["<user>a?<assistant>", "<user>b?<assistant>"]
    for missing in (type("NoTemplate", (), {})(), type("NoneTemplate", (), {"chat_template": None})()):
        with pytest.raises(ValueError, match="has no chat template"):
            prompt_texts(missing, ["a?"])


def test_same_encoding_shares_a_batch_only_between_processors_that_encode_alike(saved, questions):
    """Teacher and student of one family load equal processors from different directories: a
    batch built for one serves both. Any difference in the image settings, the tokenizer or the
    chat template means two batches."""
    path, _ = saved
    a, b = (checkpoints.load_checkpoint(path)[1] for _ in range(2))
    assert prompts.same_encoding(a, b) and prompts.same_encoding(a, a)
    images = [prompts.decode_image(c) for c in questions["image"]]
    enc_a, enc_b = (prompts.encode_prompts(p, images, questions["question"], "right") for p in (a, b))
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    # a processor that has encoded a batch (its tokenizer keeps the last padding settings) is the same
    b2 = checkpoints.load_checkpoint(path)[1]
    assert prompts.same_encoding(a, b2), "after use"
    b.image_processor.image_mean = [0.0, 0.0, 0.0]
    assert not prompts.same_encoding(a, b)
    b = checkpoints.load_checkpoint(path)[1]
    b.tokenizer.add_tokens(["zqxj"])
    assert not prompts.same_encoding(a, b)
    b = checkpoints.load_checkpoint(path)[1]
    b.chat_template = b.chat_template + " "
    assert not prompts.same_encoding(a, b)
    # the same vocabulary, another normalizer (lower-casing): the tokenizer itself differs, not only its ids
    from tokenizers import normalizers

    b = checkpoints.load_checkpoint(path)[1]
    b.tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert b.tokenizer.get_vocab() == a.tokenizer.get_vocab() and not prompts.same_encoding(a, b)


def test_image_placeholders_are_never_generated_nor_taken_as_a_response(saved, questions):
    """An untrained model can sample the image placeholder id; fed back, it breaks the teacher-
    forced forward pass ("image features and image tokens do not match"). Generation suppresses
    the placeholder ids (with the padding rows), and build_batch names such a response."""
    path, _ = saved
    backend = generation.HFBackend(path)
    placeholders = prompts.placeholder_token_ids(backend.model)
    assert backend.model.config.image_token_id in placeholders and set(placeholders) <= set(backend.suppress)
    vocab = len(backend.processor.tokenizer)
    assert set(range(vocab, backend.model.get_output_embeddings().weight.shape[0])) <= set(backend.suppress)
    images = [prompts.decode_image(c) for c in questions["image"]]
    image_id = backend.processor.image_token_id
    with pytest.raises(ValueError, match=f"response 1 holds the image placeholder id {image_id}"):
        forward.build_batch(backend.processor, images, questions["question"].tolist(), [[1, 2], [3, image_id]])


def test_cached_prompt_encoding_builds_the_same_batches(saved, questions):
    """forward.encode_rows with a cache (each prompt encoded once, alone; batches assembled)
    gives exactly the tensors of encoding the batch at once, for every family, rows repeated and
    in any order."""
    path, _ = saved
    _, processor = checkpoints.load_checkpoint(path)
    rows = pd.concat([questions, questions.iloc[::-1], questions.iloc[:1]], ignore_index=True)
    v = len(processor.tokenizer)  # ids from the top: the special (image) tokens come first
    rows["token_ids"] = [[v - 1 - i % 4, v - 2] if i % 2 else [v - 3] for i in range(len(rows))]
    cache: dict = {}
    for part in (rows.iloc[:3], rows.iloc[2:], rows):
        direct = forward.build_batch_from_rows(processor, part)
        cached = forward.build_batch_from_rows(processor, part, cache)
        assert direct.inputs.keys() == cached.inputs.keys()
        for key in direct.inputs:
            assert torch.equal(direct.inputs[key], cached.inputs[key]), key
        assert torch.equal(direct.predicts_response, cached.predicts_response)
        assert torch.equal(direct.targets, cached.targets) and direct.lengths == cached.lengths
    assert len(cache) == questions.image.map(lambda c: c["bytes"]).nunique()


def test_default_masking_selects_every_linear_weight_but_lm_head(saved):
    """METHOD.md §1 for each family: the default patterns pick exactly the weights of the model's
    ``nn.Linear`` layers (language model, vision tower, projector) but ``lm_head``, by the
    in-memory names and by the names written to disk (InternVL's vision layers and projector
    were once left out)."""
    from safetensors import safe_open

    from masters.masking import is_maskable

    path, model_type = saved
    model, _ = checkpoints.load_checkpoint(path)
    linear = {f"{name}.weight" for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    state = model.state_dict()
    chosen = {k for k, v in state.items() if is_maskable(k, list(v.shape), None, None)}
    assert chosen == linear
    assert any("vision" in k or "visual" in k for k in chosen)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        disk = [k for k in f.keys() if is_maskable(k, f.get_slice(k).get_shape(), None, None)]
    assert len(disk) == len(linear), model_type


def test_vllm_suppresses_what_the_hf_backend_never_samples(saved):
    """The vLLM backend reads the same suppressed ids from the checkpoint directory (without its
    weights) and gives them vLLM's lowest logit bias: image placeholders and padding rows are
    never a response token on either backend."""
    path, _ = saved
    hf = generation.HFBackend(path)
    ids = generation.suppressed_token_ids(path)
    assert ids == sorted(set(hf.suppress)) and ids
    vllm = generation.VLLMBackend(path, llm=object(), sampling_params=dict)
    sampling = vllm.sampling(generation.SamplingParams(n=2), seed=3)
    assert sampling["logit_bias"] == dict.fromkeys(ids, -100.0)
