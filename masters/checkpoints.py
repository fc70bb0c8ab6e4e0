"""Checkpoint directories of stock HF VLMs: load, save, identify.

A checkpoint is one directory holding the weights (safetensors only), the config, the tokenizer
and the processor (with its chat template), as ``save_pretrained`` writes it. It loads through
``AutoModelForImageTextToText`` and ``AutoProcessor``; remote code runs only when the caller
asks (PAPER_SCALE.md: the Qwen2.5-VL, Qwen3-VL and InternVL ``-HF`` checkpoints need none).

The teacher-forced forward passes (METHOD.md §5) take the decoder's final hidden states from
``model.model`` and apply ``get_output_embeddings()`` to them, which holds for the families in
:data:`MODEL_TYPES` (tested on tiny random models of each); other families are refused by
name rather than run on an unchecked assumption.
"""

from __future__ import annotations

from pathlib import Path

import torch

# config.model_type -> the class AutoModelForImageTextToText builds
MODEL_TYPES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
}


def check_model_type(model_type: str, path: str | Path) -> None:
    """Raise ``ValueError`` for a family the forward path is not known to hold for."""
    if model_type not in MODEL_TYPES:
        hint = " (original InternVL checkpoints: use the -HF conversion)" if model_type.startswith("internvl") else ""
        raise ValueError(f"{path}: model_type {model_type!r} is not supported{hint}; supported: {sorted(MODEL_TYPES)}")


def load_checkpoint(path: str | Path, trust_remote_code: bool = False, dtype=torch.float32,
                    device: str | None = "cpu"):
    """``(model, processor)`` of a checkpoint directory or Hub id, weights from safetensors, on
    ``device`` (``"auto"``: spread over the visible GPUs by accelerate's ``device_map="auto"``;
    None: where transformers built it, e.g. partitioned by ZeRO-3's ``zero.Init``)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor  # slow import: on use

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_model_type(config.model_type, path)
    placed = {"device_map": "auto"} if device == "auto" else {}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                        trust_remote_code=trust_remote_code, **placed)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return (model if device in ("auto", None) else model.to(device)), processor


def save_checkpoint(model, processor, out_dir: str | Path) -> None:
    """Save model (safetensors), tokenizer and processor as one stock HF directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


def checkpoint_identity(model_dir: str | Path) -> dict:
    """What identifies a checkpoint directory's weights without reading them: its resolved
    path and the name, size and modification time of each weight and config file."""
    root = Path(model_dir).resolve()
    files = sorted(p for p in root.glob("*") if p.suffix in (".safetensors", ".bin", ".json"))
    return {"path": str(root), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def fingerprint(spec: dict) -> str:
    """A short stable hash of what a resumable result depends on (JSON of ``spec``, keys sorted):
    a generation part or a training state of another fingerprint is discarded, not reused."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
