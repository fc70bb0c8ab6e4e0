"""Tiny VLMs of stock transformers architectures (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

A model is built from a size spec (text hidden size, layers, heads, vision width and depth,
embedding padding multiple) and the shared tokenizer; it is saved as a stock HF directory
(safetensors, config, tokenizer, processor) by :func:`masters.checkpoints.save_checkpoint`,
and loads like any real checkpoint (:func:`masters.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from masters.world.tokenizer import CHAT_TEMPLATE, EOS, PAD, special_token_ids

# Architecture -> (model_type, patch size, processor class name, video processor class name)
ARCHITECTURES = {
    "qwen2_vl": ("qwen2_vl", 14, "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("qwen2_5_vl", 14, "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("qwen3_vl", 16, "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}
SPATIAL_MERGE = 2
HEAD_DIM = 32
MROPE_SECTION = [4, 6, 6]  # sums to HEAD_DIM / 2
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelSize:
    """Size of one tiny VLM (config ``world.models.<name>``)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vocab_multiple: int

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM


def image_multiple(architecture: str) -> int:
    """Image sides must be multiples of patch size x spatial merge (28 for Qwen2/2.5, 32 for Qwen3)."""
    return ARCHITECTURES[architecture][1] * SPATIAL_MERGE


def padded_vocab(n_tokens: int, multiple: int) -> int:
    """The embedding rows: the tokenizer length rounded up to ``multiple``."""
    return int(math.ceil(n_tokens / multiple) * multiple)


def build_processor(tokenizer, architecture: str, image_size: int):
    """The stock processor of ``architecture`` around our tokenizer, fixed to ``image_size`` pixels."""
    import transformers

    _, patch, proc_name, video_name = ARCHITECTURES[architecture]
    pixels = image_size * image_size
    image_processor = transformers.Qwen2VLImageProcessor(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch,
        merge_size=SPATIAL_MERGE,
        temporal_patch_size=2,
    )
    video_processor = getattr(transformers, video_name)(patch_size=patch, merge_size=SPATIAL_MERGE)
    processor_cls = getattr(transformers, proc_name)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(architecture: str, size: ModelSize, tokenizer, max_positions: int = 1024):
    """A transformers config for a tiny ``architecture`` VLM of ``size``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    model_type, patch, _, _ = ARCHITECTURES[architecture]
    ids = special_token_ids(tokenizer)
    vocab = padded_vocab(len(tokenizer), size.vocab_multiple)
    text = dict(
        vocab_size=vocab,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": MROPE_SECTION},
        tie_word_embeddings=False,
        bos_token_id=ids[PAD],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=2 * size.vision_hidden_size,
        num_heads=max(1, size.vision_hidden_size // HEAD_DIM),
        patch_size=patch,
        spatial_merge_size=SPATIAL_MERGE,
        temporal_patch_size=2,
        in_channels=3,
        out_hidden_size=size.hidden_size,
    )
    if architecture == "qwen2_vl":
        vision.update(embed_dim=size.vision_hidden_size, hidden_size=size.hidden_size, mlp_ratio=2)
    if architecture == "qwen2_5_vl":
        vision.update(window_size=patch * SPATIAL_MERGE * 4, fullatt_block_indexes=[size.vision_depth - 1])
    if architecture == "qwen3_vl":
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(num_position_embeddings=256, deepstack_visual_indexes=[])
    config = AutoConfig.for_model(
        model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return config


def build_model(architecture: str, size: ModelSize, tokenizer, seed: int):
    """A randomly initialised tiny VLM (deterministic for a seed)."""
    torch.manual_seed(seed)
    config = build_config(architecture, size, tokenizer)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    gen = model.generation_config
    gen.eos_token_id = config.text_config.eos_token_id
    gen.pad_token_id = config.text_config.pad_token_id
    gen.bos_token_id = config.text_config.bos_token_id
    return model


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
