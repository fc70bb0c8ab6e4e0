"""Prompts for any stock HF VLM: the chat turn of a question about an image, image cells, and
batches encoded through the model's own processor (METHOD.md §1: question x = image + text,
response ŷ = the tokens generated after the prompt).

Nothing here knows a model family: the chat template, the image placeholder and its expansion
into image tokens (Qwen's ``<|vision_start|><|image_pad|><|vision_end|>``, InternVL's
``<img><IMG_CONTEXT>…</img>``) all come from the processor saved with the checkpoint, and the
special ids from its tokenizer and generation config. The turn is the one lm-eval builds from
``doc_to_text: "<image>{{question}}"`` with ``--apply_chat_template``, so generation, the
teacher-forced forward passes and evaluation see the same prompt.
"""

from __future__ import annotations

import io

from PIL import Image


def decode_image(cell) -> Image.Image:
    """A parquet ``image`` cell (``{"bytes": ..., "path": ...}``) as an RGB PIL image."""
    return Image.open(io.BytesIO(cell["bytes"])).convert("RGB")


def prompt_messages(question: str) -> list[dict]:
    """The user turn: one image, then the question (HF's typed-content chat format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_texts(processor, questions) -> list[str]:
    """Each question's prompt as text, up to and including the assistant header."""
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"{type(processor).__name__} has no chat template: save the checkpoint with its processor")
    return [processor.apply_chat_template(prompt_messages(q), add_generation_prompt=True) for q in questions]


def encode_prompts(processor, images, questions, padding_side: str):
    """A padded batch of (image, question) prompts (``input_ids``, ``attention_mask``, the
    processor's pixel inputs), image placeholders expanded by the processor."""
    return processor(images=list(images), text=prompt_texts(processor, questions), padding=True,
                     padding_side=padding_side, return_tensors="pt")


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")
    return pad


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a response: the generation config's ``eos_token_id`` (one id or a list,
    e.g. Qwen's ``<|im_end|>`` and ``<|endoftext|>``), else the tokenizer's eos token."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    if not ids:
        raise ValueError("no end-of-sequence id in the generation config or the tokenizer")
    return set(ids)


PLACEHOLDER_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def placeholder_token_ids(model) -> list[int]:
    """The ids that stand for pixels in a prompt (image/video placeholders and their delimiters,
    from the model's config): never a token of a response, so generation never samples them."""
    config = model.config
    ids = {getattr(config, key, None) for key in PLACEHOLDER_KEYS}
    return sorted(i for i in ids if isinstance(i, int))


def encoding_key(processor) -> tuple:
    """What decides how ``processor`` encodes a prompt: its image/video settings, chat template,
    tokenizer (serialized, added tokens included) and special tokens, but not where it was
    loaded from. Two processors with equal keys give identical :func:`encode_prompts` batches."""
    import json

    tok = processor.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # the serialized tokenizer, less the padding/truncation its last call left set
        backend = json.loads(backend.to_str())
        backend.pop("padding", None), backend.pop("truncation", None)
        backend = json.dumps(backend, sort_keys=True)
    return (type(processor).__name__, processor.to_json_string(), getattr(processor, "chat_template", None),
            type(tok).__name__, backend if backend is not None else sorted(tok.get_vocab().items()),
            tuple(sorted(map(str, tok.special_tokens_map.items()))), tok.pad_token_id, tok.eos_token_id,
            getattr(tok, "chat_template", None))


def same_encoding(a, b) -> bool:
    """True when the two processors encode every prompt identically (teacher and student of
    one family), so a batch built for one serves both."""
    return a is b or encoding_key(a) == encoding_key(b)
