"""Per-GPU memory of each GPU rule at paper scale (the plan ``configs/paper/common.yaml``'s
resources follow), from the models' parameter counts.

A count comes from a checkpoint directory (the safetensors headers: exact) or is given in
billions. Bytes per parameter: bf16 weights 2; ZeRO-3 training with AdamW and fp32 master
weights 2 + 2 (bf16 weights and gradients) + 4 + 4 + 4 (fp32 master, Adam m and v) = 16,
sharded over the job's GPUs (DeepSpeed's ZeRO paper, "16 Psi"). Activations and buffers are a
stated allowance per GPU, not a model of sequence lengths: ``OVERHEAD_GB`` (CUDA context,
allocator slack, ZeRO-3's gathered layer, the chunked logits of ``chunk_size`` positions).
vLLM takes ``gpu_memory_utilization`` (0.9) of each GPU and fills what the weights leave with
KV cache, so its figure is the weights' share and the KV cache room.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
OVERHEAD_GB = 8.0  # per GPU: context, allocator slack, activations of a micro-batch, gathered layer
BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1}


def parameters_of(model_dir: str | Path) -> int:
    """The number of parameters in a checkpoint directory, from its safetensors headers."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


@dataclass(frozen=True)
class Row:
    rule: str
    what: str
    gpus: int
    per_gpu_gb: float
    fits: bool


def plan(student: float, teachers: dict[str, float], gpus: dict[str, int], gpu_gb: float = 80.0,
         utilization: float = 0.9) -> list[Row]:
    """Rows of per-GPU memory (GB) for one family: ``student`` and each teacher in parameters,
    ``gpus`` per rule family (``train``, ``generate``, ``score``, ``judge``, ``evaluate``,
    ``evaluate_teacher``)."""
    largest = max(teachers.values())
    rows = []

    def row(rule, what, n, gb, kv=False):
        limit = gpu_gb * utilization if kv else gpu_gb
        rows.append(Row(rule, what, n, round(gb, 1), gb <= limit))

    n = gpus["train"]
    row("train", "ZeRO-3: student 16 B/param + largest teacher bf16, sharded", n,
        (16 * student + 2 * largest) / n / GB + OVERHEAD_GB)
    n = gpus["generate"]
    row("generate", "vLLM TP: largest teacher's bf16 weights per GPU (KV cache fills the rest)", n,
        2 * largest / n / GB, kv=True)
    n = gpus["score"]
    row("score", "teacher + reference student bf16, spread over the GPUs", n,
        (2 * largest + 2 * student) / n / GB + OVERHEAD_GB)
    row("judge", "the student bf16 (vLLM)", gpus["judge"], 2 * student / gpus["judge"] / GB, kv=True)
    n = gpus["evaluate"]
    row("evaluate", "a student's checkpoint bf16", n, 2 * student / n / GB + OVERHEAD_GB)
    n = gpus["evaluate_teacher"]
    row("evaluate_teacher", "a teacher's own rows: the largest teacher bf16, spread over the GPUs", n,
        2 * largest / n / GB + OVERHEAD_GB)
    return rows


def markdown(family: str, rows: list[Row]) -> str:
    lines = [f"| {family} | GPUs | per GPU (GB) | fits 80 GB | what |", "|---|--:|--:|:-:|---|"]
    lines += [f"| {r.rule} | {r.gpus} | {r.per_gpu_gb} | {'yes' if r.fits else 'NO'} | {r.what} |" for r in rows]
    return "\n".join(lines)
