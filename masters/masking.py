"""Magnitude masking of a teacher checkpoint (paper Eq. 1-2, Sec. 3.1; METHOD.md section 1).

For a maskable weight tensor W with n entries and a masking ratio r (Eq. 1-2)::

    k = floor(r * n)
    lambda_r = the k-th smallest |w| of W          (Eq. 1, computed in float32)
    W_r = W * 1[|W| > lambda_r]                    (Eq. 2)

k = 0 leaves W unchanged.  The threshold is **per tensor** (the paper's "per layer"); a global
threshold is never used.  Entries with |w| <= lambda_r become (+)0, so at least k entries are
zero, exactly k when the magnitudes are distinct; entries that are already zero count as the
smallest.  lambda_r grows with r, so masks are nested: whatever is zeroed at r2 is zeroed at
every r1 > r2.  ``torch.quantile`` is never used (it fails above 2**24 elements): the
thresholds of all ratios of a tensor come from one selection pass with ``numpy.partition``
over its float32 magnitudes (see :func:`thresholds`).  NaN entries (a broken checkpoint) sort
above every number and are never zeroed; a threshold that would be NaN is an error.

Which tensors are maskable is decided by name and shape (:func:`is_maskable`): by default every
weight with ndim >= 2 of the language model's decoder layers and of the vision tower's blocks
and patch merger(s); never token embeddings, ``lm_head``, norms, biases, patch/positional
embeddings or rotary tables.  The patterns match both naming layouts of Qwen2/2.5/3-VL
checkpoints (hub layout ``model.layers.0...`` / ``visual.blocks.0...`` and the in-memory layout
``model.language_model.layers.0...`` / ``model.visual.blocks.0...``).  Only F32/F16/BF16/F64
tensors are masked; any other dtype (fp8, integers) is copied unchanged.

:func:`mask_checkpoint` writes, for every ratio, a complete HF checkpoint directory
``masked_r<ratio:.2f>`` (weights with the teacher's shard layout, index, safetensors header and
metadata; every non-weight file of the teacher copied) plus ``masking_stats.csv`` with the
per-tensor thresholds and achieved zeros.

Streaming and memory
--------------------
Every shard is validated with ``safetensors.safe_open`` and then streamed one tensor at a time
(the whole model is never loaded).  Masking changes no dtype, shape or name, so every output
shard has exactly the byte layout of its input: each output file gets the input's header bytes
verbatim, then the tensors' data at the same offsets.  One pass over the input writes all
ratios: a maskable tensor's raw bytes are read once, its thresholds selected, and its masked
bytes queued for every ratio's shard before the next tensor is read; a tensor that is not
masked is copied as raw bytes in 16 MiB chunks, byte-identical by construction.  One
background thread does the writing, so disk writes overlap the work on the next tensor.

Masking works on the raw bits with numpy (torch is not imported on this path): for
F16/BF16/F32, |w| <= lambda is the same as "magnitude bits (sign cleared) <= bits of lambda",
since IEEE magnitudes are ordered like their bit patterns; the threshold itself is selected on
the exact float32 values of |w| (F64 weights are compared in float32).  After the selection
the masks are applied in blocks of 256K elements, all ratios of a block while it is in the CPU
cache.  Peak memory is the largest maskable tensor's raw bytes plus its float32 magnitudes
(6 bytes per element for bf16), plus at most 128 MiB queued for the writer and one 16 MiB copy
chunk - independent of shard size and of the number of ratios.  Outputs are written to hidden
``.masked_r*.partial-<pid>`` directories and renamed into place at the end, so an interrupted
run never leaves a half-written ``masked_r*`` directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import struct
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from masters.schedule import ratios as schedule_ratios  # Eq. 3 ratio list (METHOD.md section 2)

if TYPE_CHECKING:  # torch is imported lazily: the checkpoint path does not need it
    import torch

# Regexes (``re.search``) over tensor names.  A tensor is maskable when it has ndim >= 2, some
# include pattern matches and no exclude pattern matches.
DEFAULT_INCLUDE: list[str] = [
    r"(^|\.)layers\.\d+\.",  # language-model decoder layers: q/k/v/o_proj, gate/up/down_proj
    r"(^|\.)blocks\.\d+\.",  # vision-tower blocks: attn.qkv, attn.proj, mlp.*
    r"(^|\.)merger\.",  # vision patch merger MLP (mlp.0 / mlp.2, linear_fc1 / linear_fc2)
    r"(^|\.)deepstack_merger_list\.\d+\.",  # Qwen3-VL deepstack mergers
]
DEFAULT_EXCLUDE: list[str] = [
    r"embed_tokens",  # token embeddings
    r"(^|\.)lm_head\.",  # output projection
    r"norm",  # every norm: input_layernorm, norm1/2, q_norm, merger.norm, model.norm ...
    r"(^|\.)ln_",  # Qwen2-VL merger ln_q
    r"\.bias$",  # every bias
    r"patch_embed",  # vision patch embedding (a conv)
    r"pos_embed",  # learned positional embeddings (Qwen3-VL pos_embed)
    r"position_embedding",
    r"rotary",  # rotary tables
]

STATS_FILE = "masking_stats.csv"
STATS_COLUMNS = ["name", "numel", "ratio", "threshold", "zeros", "masked", "k", "sparsity", "dtype", "shard"]
INDEX_FILE = "model.safetensors.index.json"
# Weight formats that must not be copied into a masked checkpoint (they would hold unmasked weights).
_FOREIGN_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "pytorch_model.bin.index.json")
_CHUNK = 16 << 20  # raw-copy chunk (bytes)
_BLOCK = 1 << 18  # elements masked per block: a block and its masks stay in the CPU cache
_WRITE_BUFFER = 128 << 20  # bytes queued for the writer thread at most

# Maskable safetensors dtypes -> (unsigned type of the same width, sign-cleared magnitude mask)
_BITS = {
    "BF16": (np.uint16, 0x7FFF),
    "F16": (np.uint16, 0x7FFF),
    "F32": (np.uint32, 0x7FFF_FFFF),
    "F64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF),
}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


# --------------------------------------------------------------------------------------------
# Names and ratios


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"invalid {what} regex {p!r}: {e}") from None
    return compiled


def is_maskable(name: str, shape: Sequence[int], include: Iterable[str] | None = None,
                exclude: Iterable[str] | None = None) -> bool:
    """Whether tensor ``name`` of ``shape`` is masked: ndim >= 2, matches an ``include`` regex and
    no ``exclude`` regex (``re.search``; ``None`` -> :data:`DEFAULT_INCLUDE` / :data:`DEFAULT_EXCLUDE`).
    """
    if len(shape) < 2:
        return False
    inc = _compile(DEFAULT_INCLUDE if include is None else include, "include")
    exc = _compile(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude")
    return _matches(name, inc, exc)


def _matches(name: str, inc: list[re.Pattern], exc: list[re.Pattern]) -> bool:
    return any(p.search(name) for p in inc) and not any(p.search(name) for p in exc)


def ratio_dirname(r: float) -> str:
    """The directory of the teacher masked at ratio ``r``: ``masked_r0.20`` (two decimals, never ``-0.00``)."""
    text = f"{float(r):.2f}"
    if text == "-0.00":
        text = "0.00"
    return f"masked_r{text}"


def _validate_ratios(ratios: Iterable[float], unique_dirs: bool = True) -> list[float]:
    if isinstance(ratios, (int, float)):
        ratios = [ratios]
    out: list[float] = []
    for r in ratios:
        try:
            r = float(r)
        except (TypeError, ValueError):
            raise ValueError(f"masking ratio {r!r} is not a number") from None
        if not math.isfinite(r) or not 0.0 <= r < 1.0:
            raise ValueError(f"masking ratio {r!r} must be in [0, 1)")
        out.append(r + 0.0)  # -0.0 -> 0.0
    if not out:
        raise ValueError("no masking ratios given")
    if unique_dirs:
        dirs: dict[str, float] = {}
        for r in out:
            d = ratio_dirname(r)
            if d in dirs:
                raise ValueError(f"masking ratios {dirs[d]} and {r} both map to directory {d}")
            dirs[d] = r
    return out


def _num_masked(r: float, n: int) -> int:
    """k = floor(r*n), with r read as the decimal it prints as (0.29 * 100 -> 29, not 28)."""
    return math.floor(Fraction(repr(float(r))) * n)


# --------------------------------------------------------------------------------------------
# Thresholds


def _kth_smallest(absw: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """The k-th smallest value of ``absw`` for every k >= 1 (``absw`` is reordered in place).

    One selection pass: ``numpy.partition`` at the largest k over the whole array, then each
    smaller k inside the prefix that the previous partition left below it (that prefix holds
    exactly the smallest values).  Exact, like sorting.  (A single ``partition`` call with all
    kth at once gives the same values but measured 4-5x slower on 45M-element bf16 weights.)
    """
    hi = absw.size
    out: dict[int, float] = {}
    for k in sorted({k for k in ks if k > 0}, reverse=True):
        part = absw[:hi]
        part.partition(k - 1)
        value = float(part[k - 1])
        if math.isnan(value):
            raise ValueError("masking threshold is NaN: the tensor holds NaN weights")
        out[k] = value
        hi = k - 1
    return out


def _thresholds_from_abs(absw: np.ndarray, ratios: Sequence[float]) -> dict[float, float | None]:
    ks = {r: _num_masked(r, absw.size) for r in ratios}
    values = _kth_smallest(absw, ks.values())
    return {r: (values[k] if k > 0 else None) for r, k in ks.items()}


def _abs_f32(tensor: "torch.Tensor") -> np.ndarray:
    """|w| as a flat float32 numpy array that the caller owns (never a view of ``tensor``)."""
    if not tensor.is_floating_point():
        raise TypeError(f"only floating-point tensors can be masked, got {tensor.dtype}")
    import torch

    t = tensor.detach().cpu().reshape(-1)
    a = t.abs() if t.dtype == torch.float32 else t.to(torch.float32).abs_()
    return a.numpy()


def thresholds(tensor: "torch.Tensor", ratios: Iterable[float]) -> dict[float, float | None]:
    """Per-tensor thresholds lambda_r (Eq. 1) of every ratio, from one selection pass.

    |w| is taken in float32; k = floor(r*n); ``None`` where k = 0 (the tensor stays unchanged),
    else the k-th smallest |w| (``numpy.partition``, exact at any size).
    """
    rs = _validate_ratios(ratios, unique_dirs=False)
    return _thresholds_from_abs(_abs_f32(tensor), rs)


def mask_tensor(tensor: "torch.Tensor", threshold: float | None) -> "torch.Tensor":
    """Eq. 2: ``w * 1[|w| > threshold]`` (comparison in float32); dtype and shape are kept.

    ``threshold=None`` (k = 0) returns ``tensor`` itself.  Zeroed entries are +0.0; NaN entries
    are kept.
    """
    if threshold is None:
        return tensor
    import torch

    absw = _abs_f32(tensor)
    drop = torch.from_numpy(np.less_equal(absw, np.float32(threshold))).reshape(tensor.shape)
    return tensor.masked_fill(drop, 0)


# --------------------------------------------------------------------------------------------
# Raw bits (the checkpoint path)


def _abs32_from_mag(mag: np.ndarray, dtype: str) -> np.ndarray:
    """Exact float32 |w| (a new array) from sign-cleared magnitude bits."""
    if dtype == "BF16":
        return np.left_shift(mag, np.uint32(16), dtype=np.uint32).view(np.float32)  # bf16 = top half of f32
    if dtype == "F16":
        return mag.view(np.float16).astype(np.float32)
    if dtype == "F32":
        return mag.view(np.float32).copy()
    return mag.view(np.float64).astype(np.float32)  # F64: compared in float32, as the contract says


def _threshold_bits(threshold: float, dtype: str):
    """Bits of ``threshold`` (a value of ``dtype``) with the magnitude ordering of ``dtype``."""
    f32 = np.array(threshold, dtype=np.float32)
    if dtype == "BF16":
        bits = int(f32.view(np.uint32)) >> 16
        assert bits << 16 == int(f32.view(np.uint32)), "bf16 threshold must be a bf16 value"
        return np.uint16(bits)
    if dtype == "F16":
        return np.float16(threshold).view(np.uint16)
    return f32.view(np.uint32)[()]  # F32


class _Writer:
    """One background thread writing queued buffers, in order, to their file handles.

    At most ``max_bytes`` wait in the queue (a larger buffer waits until the queue is empty).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._cv = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._pending = 0
        self._max = _WRITE_BUFFER if max_bytes is None else max_bytes
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mask-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._closed:
                    self._cv.wait()
                if not self._items:
                    return
                handles, buf, nbytes = self._items.popleft()
            if self._error is None:
                try:
                    for handle in handles:
                        handle.write(buf)
                except BaseException as e:  # reported by the next write() or close()
                    self._error = e
            with self._cv:
                self._pending -= nbytes
                self._cv.notify_all()

    def write(self, handles, buf) -> None:
        nbytes = memoryview(buf).nbytes
        with self._cv:
            while self._pending and self._pending + nbytes > self._max and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            self._items.append((handles, buf, nbytes))
            self._pending += nbytes
            self._cv.notify_all()

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a write error."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is queued and stop (error path; never raises)."""
        with self._cv:
            self._error = self._error or RuntimeError("aborted")
            self._closed = True
            self._cv.notify_all()
        self._thread.join()


def _count_zeros(buf, dtype: str) -> int:
    """Number of (+/-) zero elements in raw little-endian bytes of safetensors ``dtype`` (-1: unknown dtype)."""
    if dtype in _BITS:
        bits_t, sign_clear = _BITS[dtype]
        bits = np.frombuffer(buf, bits_t)
        return bits.size - int(np.count_nonzero(bits & bits_t(sign_clear)))
    if dtype in ("F8_E4M3", "F8_E5M2"):
        bits = np.frombuffer(buf, np.uint8)
        return bits.size - int(np.count_nonzero(bits & np.uint8(0x7F)))
    if dtype in _ITEMSIZE:
        bits = np.frombuffer(buf, {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[_ITEMSIZE[dtype]])
        return bits.size - int(np.count_nonzero(bits))
    return -1


# --------------------------------------------------------------------------------------------
# Checkpoint files


def _weight_files(teacher: Path) -> list[Path]:
    if not teacher.is_dir():
        raise FileNotFoundError(f"teacher checkpoint directory not found: {teacher}")
    index = teacher / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read shard index {index}: {e!r}") from None
        for shard in shards:
            if not (teacher / shard).is_file():
                raise FileNotFoundError(f"shard {teacher / shard} listed in {index} is missing")
    files = sorted(teacher.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weight files in teacher checkpoint {teacher}")
    return files


def _read_header(path: Path) -> tuple[bytes, dict]:
    """The raw header (8-byte length + JSON, as on disk) and its parsed form, after validation."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError ...
        raise ValueError(f"corrupt or truncated safetensors file {path}: {e}") from None
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    header = json.loads(raw)
    entries = [v for k, v in header.items() if k != "__metadata__"]
    end = max((v["data_offsets"][1] for v in entries), default=0)
    if 8 + n + end != size:
        raise ValueError(f"corrupt or truncated safetensors file {path}: header needs {8 + n + end} bytes, file has {size}")
    return struct.pack("<Q", n) + raw, header


def _read(fin, nbytes: int) -> bytes:
    buf = fin.read(nbytes)
    if len(buf) != nbytes:
        raise ValueError(f"corrupt or truncated safetensors file {fin.name}: unexpected end of data")
    return buf


def _mask_shard(src: Path, outs: list[Path], ratios: list[float], inc, exc) -> list[dict]:
    """Mask one safetensors file into ``outs`` (one per ratio) in one pass; its stats rows."""
    head, header = _read_header(src)
    data_start = len(head)
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    rows: list[dict] = []
    handles = [open(p, "wb") for p in outs]
    writer = _Writer()
    try:
        writer.write(handles, head)
        pos = 0  # data bytes written so far (relative to data_start)
        with open(src, "rb") as fin:
            for name, info in entries:
                begin, end = info["data_offsets"]
                dtype, shape = info["dtype"], info["shape"]
                numel = math.prod(shape)
                if begin != pos:  # a gap in the data section (not written by safetensors): copy it
                    fin.seek(data_start + pos)
                    _copy_raw(fin, writer, handles, begin - pos, None)
                fin.seek(data_start + begin)
                if dtype in _BITS and len(shape) >= 2 and _matches(name, inc, exc):
                    per_ratio = _mask_raw(_read(fin, end - begin), dtype, ratios, writer, handles)
                    rows += [dict(name=name, numel=numel, ratio=r, threshold=thr, zeros=zeros, masked=True,
                                  k=_num_masked(r, numel), dtype=dtype, shard=src.name)
                             for r, (thr, zeros) in zip(ratios, per_ratio)]
                else:
                    zeros = _copy_raw(fin, writer, handles, end - begin, dtype)
                    rows += [dict(name=name, numel=numel, ratio=r, threshold=None, zeros=zeros, masked=False,
                                  k=0, dtype=dtype, shard=src.name) for r in ratios]
                pos = end
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        for h in handles:
            h.close()
    size = src.stat().st_size
    for p in outs:
        if p.stat().st_size != size:
            raise RuntimeError(f"internal error: {p} has {p.stat().st_size} bytes, {src} has {size}")
    return rows


def _mask_raw(raw: bytes, dtype: str, ratios: list[float], writer: _Writer, handles) -> list[tuple]:
    """Queue ``raw`` masked at every ratio (handles[i] gets ratios[i]); [(threshold, zeros)] per ratio.

    The thresholds come from one selection over the whole tensor; the masks are then applied
    block by block (``_BLOCK`` elements), every ratio on a block while it is in the CPU cache.
    """
    bits_t, sign_clear = _BITS[dtype]
    sign_clear = bits_t(sign_clear)
    bits = np.frombuffer(raw, bits_t)
    n = bits.size
    absw = _abs32_from_mag(bits & sign_clear, dtype)
    thr = _thresholds_from_abs(absw, ratios)  # reorders absw
    del absw
    lams = [thr[r] for r in ratios]
    limits = [None if lam is None else _threshold_bits(lam, dtype) for lam in lams]
    zeros = [0] * len(ratios)
    for start in range(0, n, _BLOCK):
        block = bits[start:start + _BLOCK]
        mag = block & sign_clear
        keep = np.empty(block.size, dtype=bool)
        abs_f32 = _abs32_from_mag(mag, dtype) if dtype == "F64" else None
        for i, (lam, limit, handle) in enumerate(zip(lams, limits, handles)):
            if lam is None:
                zeros[i] += block.size - int(np.count_nonzero(mag))
                writer.write([handle], block)
                continue
            if dtype == "F64":  # float32 comparison, as the contract says
                np.logical_not(np.less_equal(abs_f32, np.float32(lam)), out=keep)
            else:  # |w| > lam  <=>  magnitude bits > bits of lam  (IEEE order)
                np.greater(mag, limit, out=keep)
            zeros[i] += block.size - int(np.count_nonzero(keep))
            writer.write([handle], np.multiply(block, keep))  # new buffer, owned by the writer queue
    return list(zip(lams, zeros))


def _copy_raw(fin, writer: _Writer, handles, nbytes: int, dtype: str | None) -> int:
    """Copy ``nbytes`` from ``fin`` to every handle in chunks; their zero count when ``dtype`` is given."""
    zeros = 0
    item = _ITEMSIZE.get(dtype, 1) if dtype else 1
    chunk = _CHUNK - _CHUNK % item
    left = nbytes
    while left > 0:
        buf = _read(fin, min(chunk, left))
        writer.write(handles, buf)
        if dtype:
            z = _count_zeros(buf, dtype)
            zeros = -1 if (z < 0 or zeros < 0) else zeros + z
        left -= len(buf)
    return zeros


def _copy_other_files(teacher: Path, dest: Path, skip: set[Path]) -> None:
    """Copy every non-weight entry of ``teacher`` (config, tokenizer, processor, index, ...)."""
    for entry in sorted(teacher.iterdir()):
        if entry.resolve() in skip or entry.name == ".cache" or entry.name.startswith(".masked_r"):
            continue
        if entry.is_file() and (entry.suffix == ".safetensors" or any(entry.match(g) for g in _FOREIGN_WEIGHTS)):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest / entry.name)


def mask_checkpoint(teacher_dir: str | os.PathLike, out_root: str | os.PathLike, ratios: Iterable[float],
                    include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Write ``out_root/masked_r{r:.2f}`` for every ratio ``r`` (Eq. 1-2, per-tensor thresholds).

    Each output is a complete HF checkpoint: the teacher's safetensors files under the same
    names, with the same header (tensor order, dtypes, shapes, offsets, ``__metadata__``) and the
    same index json, maskable tensors masked and every other tensor byte-identical; every
    non-weight file of the teacher copied (other weight formats such as ``*.bin`` are not);
    ``masking_stats.csv`` with that ratio's rows.  An existing ``masked_r*`` directory of the
    same ratio is replaced.

    Returns the stats of all ratios, one row per (tensor, ratio), columns :data:`STATS_COLUMNS`:
    ``threshold`` (NaN where k = 0 or not masked), ``zeros`` (zero entries in the written tensor),
    ``masked`` (selected for masking: maskable name, shape and dtype), ``k`` = floor(r*n),
    ``sparsity`` = zeros / numel.  One pass over the input; see the module docstring for memory.
    """
    teacher = Path(teacher_dir)
    rs = _validate_ratios(ratios)
    inc = _compile(DEFAULT_INCLUDE if include is None else include, "include")
    exc = _compile(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude")
    files = _weight_files(teacher)
    for f in files:  # validate every input before writing anything
        _read_header(f)

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    partials = [out_root / f".{ratio_dirname(r)}.partial-{os.getpid()}" for r in rs]
    rows: list[dict] = []
    t0 = time.time()
    try:
        for p in partials:
            if p.exists():
                shutil.rmtree(p)
            p.mkdir()
        for i, src in enumerate(files, 1):
            shard_rows = _mask_shard(src, [p / src.name for p in partials], rs, inc, exc)
            rows += shard_rows
            if progress:
                n_total = len(shard_rows) // len(rs)
                n_masked = sum(1 for row in shard_rows if row["masked"]) // len(rs)
                print(f"[mask] {i}/{len(files)} {src.name}: {n_masked}/{n_total} tensors masked "
                      f"at {len(rs)} ratios ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        stats = pd.DataFrame(rows, columns=STATS_COLUMNS)
        stats["threshold"] = stats["threshold"].astype("float64")
        stats["sparsity"] = stats["zeros"] / stats["numel"].where(stats["numel"] > 0)
        skip = {out_root.resolve(), *(p.resolve() for p in partials)}
        for r, p in zip(rs, partials):
            _copy_other_files(teacher, p, skip)
            stats[stats["ratio"] == r].to_csv(p / STATS_FILE, index=False)
        for r, p in zip(rs, partials):
            final = out_root / ratio_dirname(r)
            if final.exists():
                shutil.rmtree(final)
            os.replace(p, final)
    except BaseException:
        for p in partials:
            shutil.rmtree(p, ignore_errors=True)
        raise
    if progress:
        sel = stats[stats["masked"]]
        for r in rs:
            s = sel[sel["ratio"] == r]
            frac = s["zeros"].sum() / max(1, s["numel"].sum())
            print(f"[mask] {ratio_dirname(r)}: {len(s)} masked tensors, {frac:.2%} of their entries zero",
                  file=sys.stderr)
    return stats.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Command line


def _stage_ratios(r_max: float, step: float | None) -> list[float]:
    """The schedule's ratios (METHOD.md section 2), with errors that name the command-line flags."""
    try:
        return schedule_ratios(r_max, step)
    except ValueError as e:
        raise ValueError(f"invalid --r-max {r_max} / --step {step}: {e}") from None


def cmd_mask(args: argparse.Namespace) -> None:
    rs = _stage_ratios(args.r_max, args.step)
    stats = mask_checkpoint(args.teacher, args.out, rs, include=args.include, exclude=args.exclude,
                            progress=not args.quiet)
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        stats.to_csv(args.stats, index=False)
    print(f"masked {args.teacher} at ratios {rs} -> "
          + ", ".join(str(Path(args.out) / ratio_dirname(r)) for r in rs))


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``mask`` subcommand (``masters mask``) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "mask", help="magnitude-mask a teacher at every ratio of the schedule (Eq. 1-2)",
        description="Write OUT/masked_r<ratio> (a complete HF checkpoint) for every ratio "
                    "r_k = r_max - k*step down to 0, with per-tensor magnitude thresholds.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory (safetensors, single file or sharded)")
    p.add_argument("--r-max", type=float, required=True, help="largest masking ratio, in [0, 1)")
    p.add_argument("--step", type=float, default=None,
                   help="ratio decrement s between stages; r_max must be a multiple of it (needed if --r-max > 0)")
    p.add_argument("--out", required=True, help="output root: receives one masked_r<ratio> directory per ratio")
    p.add_argument("--include", nargs="+", default=None, metavar="REGEX",
                   help="regexes of maskable tensor names; replace the defaults (LM and vision linear layers)")
    p.add_argument("--exclude", nargs="+", default=None, metavar="REGEX",
                   help="regexes of tensor names never masked; replace the defaults (embeddings, lm_head, "
                        "norms, biases, patch/positional embeddings, rotary)")
    p.add_argument("--stats", default=None, metavar="CSV", help="also write the stats of all ratios to this CSV")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress on stderr")
    p.set_defaults(func=cmd_mask)
    return p
