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
thresholds of all ratios of a tensor come from one exact selection pass (see
:func:`thresholds`).  NaN entries (a broken checkpoint) sort above every number and are never
zeroed; a threshold that would be NaN is an error.

Exact selection on bit patterns
-------------------------------
With the sign bit cleared, IEEE bit patterns order exactly like the magnitudes they encode
(+0 < denormals < normals < inf < NaN), and for F32/F16/BF16 every such pattern is exactly a
float32 value, so "the k-th smallest float32 |w|" is "the float32 value of the k-th smallest
magnitude pattern" and "|w| <= lambda" is "magnitude pattern <= pattern of lambda".
:func:`_select_bits` finds the k-th smallest pattern of every ratio at once: for 16-bit floats
from one histogram of the 2**15 magnitude patterns (``np.bincount``) and its cumulative sum
(the first pattern whose cumulative count reaches k); for F32 by a two-pass radix select
(histogram of the high 16 magnitude bits, then of the low 16 bits inside each selected
bucket).  Exact at any size, O(n), ties and zeros handled by construction; the cumulative
counts also give every ratio's zero count.  F64 (and any other floating dtype given to
:func:`thresholds`) uses ``numpy.partition`` over the float32 magnitudes.  The results are
identical to sorting (tests compare against ``np.sort``).

Which tensors are maskable is decided by name and shape (:func:`is_maskable`): by default every
weight with ndim >= 2 of the language model's decoder layers and of the vision tower's blocks
and patch merger(s); never token embeddings, ``lm_head``, norms, biases, patch/positional
embeddings or rotary tables.  The patterns match both naming layouts of Qwen2/2.5/3-VL
checkpoints (hub layout ``model.layers.0...`` / ``visual.blocks.0...`` and the in-memory layout
``model.language_model.layers.0...`` / ``model.visual.blocks.0...``).  Only F32/F16/BF16/F64
tensors are masked; any other dtype (fp8, integers) is copied unchanged.

:func:`mask_checkpoint` writes, for every ratio, a complete HF checkpoint directory
``masked_r<ratio>``, named by its exact ratio (e.g. ``masked_r0.175``), with the weights in the
teacher's shard layout, index, safetensors header and metadata, every non-weight file of the
teacher copied, and ``masking_stats.csv`` with the per-tensor thresholds and achieved zeros.

Streaming and memory
--------------------
Every shard is validated with ``safetensors.safe_open`` and then streamed one tensor at a time
(the whole model is never loaded).  Masking changes no dtype, shape or name, so every output
shard has exactly the byte layout of its input: each output file gets the input's header bytes
verbatim, then the tensors' data at the same offsets.  One pass over the input writes all
ratios: a maskable tensor's raw bytes are read once, its thresholds selected, and its masked
bytes queued for every ratio's shard before the next tensor is read; a tensor that is not
masked is copied as raw bytes in 16 MiB chunks, byte-identical by construction.

Masking works on the raw bits with numpy, integer ops only (torch is not imported on this
path): with ``m`` the magnitude bits and ``p`` the threshold pattern, ``(p - m) >> (width-1)``
in signed integers is all ones exactly where |w| > lambda, and the masked tensor is the raw bits
AND that (F64 weights are compared in float32, as the contract says).  Work is spread over
``_THREADS`` (2) worker threads - numpy releases the GIL: the histogram by halves of the
tensor, the masks by chunks of 8 blocks of 256K elements (all ratios of a block while it is in
the CPU cache), handed to the writers in order.  Writing dominates the run time: every output
file has its own writer thread (the kernel serializes writes to one file, not to different
ones) and the writers serve all shards of a run (no pause between shards), read and output
buffers are recycled through a pool (a freshly allocated buffer page-faults on every page),
and each output file is written back as it grows, its
written-back pages dropped from the page cache (:class:`_Writeback`): several GB of dirty
output otherwise pile up, get throttled to disk speed at once, and each needs a newly
allocated page.  Peak memory is about two raw copies of the largest maskable tensor (the one
being masked and the previous one, still being written), at most 128 MiB queued for the
writers, a few chunks in flight (``_THREADS + 1`` x ratios x 2M elements) and the recycled
buffers - independent of shard size; measured 0.68 GiB on a 1.7 GB bf16 checkpoint at 5
ratios.  Outputs are written to hidden ``.masked_r*.partial-<pid>`` directories and renamed
into place at the end, so an interrupted run never leaves a half-written ``masked_r*``
directory.
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

from masters.schedule import ratio_str
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
_WRITEBACK = 32 << 20  # per output file: start writeback every this many bytes, drop written-back pages (0: off)
_WRITEBACK_LAG = 2  # ... of the data written that many writeback steps ago
_WRITERS = 8  # writer threads at most (one per output file)

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
    """The directory of the teacher masked at ratio ``r``: ``masked_r0.20``, ``masked_r0.175``
    (its exact ratio, :func:`masters.schedule.ratio_str`)."""
    return f"masked_r{ratio_str(r)}"


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
    exactly the smallest values).  Exact, like sorting.  Used for F64 (compared in float32) and
    any other floating dtype of :func:`thresholds`; F32/F16/BF16 use :func:`_select_bits`.
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


# --- exact selection on magnitude bit patterns (F32, F16, BF16) ----------------------------
#
# With the sign bit cleared, the bit patterns of IEEE floats order exactly like their magnitudes
# (+0 < denormals < normals < inf < NaN; distinct patterns are distinct values), so the k-th
# smallest |w| is the float value of the k-th smallest magnitude pattern.  A 16-bit float has
# 2**15 magnitude patterns: one histogram (np.bincount) and its cumulative sum give the k-th
# smallest of every k at once ("the first pattern whose cumulative count reaches k").  F32 is a
# two-pass radix select: a histogram of the high 16 bits picks each k's bucket, a histogram of
# the low 16 bits of that bucket's entries picks the pattern.  Both are exact at any size and
# O(n); ties and zeros need no special case (the cumulative count jumps over a run of ties).

_NAN_BITS = {"BF16": 0x7F81, "F16": 0x7C01, "F32": 0x7F80_0001}  # smallest NaN magnitude pattern
_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_MASK_CHUNK_BLOCKS = 8  # blocks (of _BLOCK elements) per masking task handed to a worker thread
_pool_lock = threading.Lock()
_pool_obj = None


def _pool():
    """The module's worker threads (numpy releases the GIL in the loops they run); a new pool
    after ``_THREADS`` changed or in a forked child (which inherits no threads)."""
    global _pool_obj
    with _pool_lock:
        if _pool_obj is None or _pool_obj[0] != (_THREADS, os.getpid()):
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="mask-worker")
            _pool_obj = ((_THREADS, os.getpid()), pool)
        return _pool_obj[1]


def _parts(n: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges (whole blocks) splitting n elements among the worker threads."""
    if _THREADS <= 1 or n < 2 * _BLOCK:
        return [(0, n)]
    blocks = -(-n // _BLOCK)
    cuts = [min(n, (blocks * i // _THREADS) * _BLOCK) for i in range(_THREADS + 1)]
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]


def _map_parts(fn, n: int) -> list:
    """``[fn(lo, hi) for (lo, hi) in _parts(n)]``, the parts run on the worker threads."""
    parts = _parts(n)
    if len(parts) == 1:
        return [fn(*parts[0])]
    futures = [_pool().submit(fn, lo, hi) for lo, hi in parts]
    return [f.result() for f in futures]


def _ordered(tasks: Iterable) -> Iterable:
    """Results of the callables ``tasks``, in order; up to ``_THREADS + 1`` of them run ahead."""
    if _THREADS <= 1:
        for task in tasks:
            yield task()
        return
    pool = _pool()
    pending: collections.deque = collections.deque()
    try:
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) > _THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def _high16(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """High 16 bits of the magnitude (sign cleared) of uint32 ``bits``, into intp ``out``."""
    np.right_shift(bits, np.uint32(16), out=out)
    np.bitwise_and(out, 0x7FFF, out=out)
    return out


def _hist(bits: np.ndarray, buckets: Sequence[int] | None = None):
    """Counts (int64) of the magnitude patterns of ``bits``.

    uint16 ``bits``: all 2**15 patterns (sign cleared).  uint32 without ``buckets``: the high
    16 bits of the magnitude (2**15 buckets); with ``buckets``: ``{b: counts of the low 16 bits
    (2**16) of the entries whose high magnitude bits are b}``, all buckets in one pass.  Blocks
    of ``_BLOCK`` elements, the halves of the tensor on the worker threads.
    """
    size = 1 << 15

    def part(lo: int, hi: int):
        h = np.zeros(size, np.int64) if buckets is None else {b: np.zeros(1 << 16, np.int64) for b in buckets}
        buf = np.empty(min(_BLOCK, hi - lo), np.intp)  # bincount counts intp; widen once, in cache
        for s in range(lo, hi, _BLOCK):
            block = bits[s:min(s + _BLOCK, hi)]
            idx = buf[:block.size]
            if bits.dtype == np.uint16:
                h += np.bincount(np.bitwise_and(block, np.uint16(0x7FFF), out=idx), minlength=size)
            elif buckets is None:
                h += np.bincount(_high16(block, idx), minlength=size)
            else:
                high = _high16(block, idx)
                for b in buckets:
                    low = np.bitwise_and(block[high == b], np.uint32(0xFFFF)).astype(np.intp)
                    h[b] += np.bincount(low, minlength=1 << 16)
        return h

    parts = _map_parts(part, bits.size)
    if buckets is None:
        return sum(parts)
    return {b: sum(p[b] for p in parts) for b in buckets}


def _select_bits(bits: np.ndarray, dtype: str, ks: Iterable[int], count_zeros: bool = False):
    """Exact k-th smallest magnitude pattern of raw ``bits`` (F32/F16/BF16) for every k >= 1.

    Returns ``(pattern, at_most, zeros)``: ``pattern[k]`` the k-th smallest magnitude bit
    pattern (sign cleared), ``at_most[k]`` the number of entries whose magnitude is <= it (the
    zeros that masking at it leaves), ``zeros`` the number of (+-)0 entries (``None`` unless
    ``count_zeros``).  A NaN pattern raises ``ValueError``.
    """
    ks = sorted({int(k) for k in ks if k > 0})
    if ks and ks[-1] > bits.size:
        raise ValueError(f"k = {ks[-1]} > {bits.size} entries")
    pattern: dict[int, int] = {}
    at_most: dict[int, int] = {}
    zeros = None
    if dtype in ("BF16", "F16"):
        if ks or count_zeros:
            hist = _hist(bits)
            cum = np.cumsum(hist)
            for k, p in zip(ks, np.searchsorted(cum, ks, side="left")):
                pattern[k], at_most[k] = int(p), int(cum[p])
            zeros = int(hist[0]) if count_zeros else None
    elif dtype == "F32":
        high = np.cumsum(_hist(bits)) if ks else None
        below: dict[int, int] = {}
        bucket_of: dict[int, int] = {}
        for k in ks:
            b = int(np.searchsorted(high, k, side="left"))
            bucket_of[k], below[k] = b, (int(high[b - 1]) if b > 0 else 0)
        wanted = sorted(set(bucket_of.values()) | ({0} if count_zeros else set()))
        low = {b: np.cumsum(h) for b, h in (_hist(bits, wanted).items() if wanted else ())}
        for k in ks:
            b = bucket_of[k]
            lo = int(np.searchsorted(low[b], k - below[k], side="left"))
            pattern[k], at_most[k] = (b << 16) | lo, below[k] + int(low[b][lo])
        zeros = int(low[0][0]) if count_zeros else None
    else:
        raise ValueError(f"no bit-pattern selection for dtype {dtype}")
    if any(p >= _NAN_BITS[dtype] for p in pattern.values()):
        raise ValueError("masking threshold is NaN: the tensor holds NaN weights")
    return pattern, at_most, zeros


def _pattern_value(pattern: int, dtype: str) -> float:
    """The (float32-exact) value of a magnitude bit pattern of ``dtype``."""
    if dtype == "BF16":  # bf16 = the top half of a float32
        return float(np.array(pattern << 16, dtype=np.uint32).view(np.float32))
    if dtype == "F16":
        return float(np.array(pattern, dtype=np.uint16).view(np.float16))
    return float(np.array(pattern, dtype=np.uint32).view(np.float32))  # F32


def _torch_bits(tensor: "torch.Tensor") -> tuple[np.ndarray, str] | None:
    """Flat raw bits (numpy uint16/uint32) and safetensors dtype of an F32/F16/BF16 tensor, else None."""
    import torch

    spec = {torch.bfloat16: ("BF16", torch.int16, np.uint16), torch.float16: ("F16", torch.int16, np.uint16),
            torch.float32: ("F32", torch.int32, np.uint32)}.get(tensor.dtype)
    if spec is None:
        return None
    dtype, int_t, bits_t = spec
    t = tensor.detach().cpu().contiguous().reshape(-1)
    return t.view(int_t).numpy().view(bits_t), dtype


def thresholds(tensor: "torch.Tensor", ratios: Iterable[float]) -> dict[float, float | None]:
    """Per-tensor thresholds lambda_r (Eq. 1) of every ratio, from one selection pass.

    |w| is taken in float32; k = floor(r*n); ``None`` where k = 0 (the tensor stays unchanged),
    else the k-th smallest |w|, exact at any size: from a histogram of the magnitude bit
    patterns for F32/F16/BF16 (:func:`_select_bits`), from ``numpy.partition`` over the
    float32 magnitudes for other floating dtypes (F64).
    """
    rs = _validate_ratios(ratios, unique_dirs=False)
    if not tensor.is_floating_point():
        raise TypeError(f"only floating-point tensors can be masked, got {tensor.dtype}")
    raw = _torch_bits(tensor)
    if raw is None:
        return _thresholds_from_abs(_abs_f32(tensor), rs)
    bits, dtype = raw
    ks = {r: _num_masked(r, bits.size) for r in rs}
    pattern, _, _ = _select_bits(bits, dtype, ks.values())
    return {r: (_pattern_value(pattern[k], dtype) if k > 0 else None) for r, k in ks.items()}


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


def _f64_abs32(mag: np.ndarray) -> np.ndarray:
    """|w| in float32 (a new array) from sign-cleared F64 bits: F64 weights are compared in
    float32, as the contract says (F32/F16/BF16 are compared on their bit patterns)."""
    return mag.view(np.float64).astype(np.float32)


class _Buffers:
    """Reusable byte buffers (uint8 numpy arrays), handed back by the writer once written.

    Freshly allocated buffers page-fault on first touch, which costs more than the masking
    itself; recycled ones are already mapped.  ``get`` returns the smallest free buffer that
    holds ``nbytes`` (at most twice as large), else a new one.  Thread-safe; buffers handed back
    beyond ``keep_bytes`` in total are dropped (largest first) so the pool never outgrows what
    was in flight at once.
    """

    def __init__(self, keep_bytes: int = 1 << 30) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep_bytes

    def get(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._free):  # sorted by size: the first that holds nbytes
                if buf.size >= nbytes:
                    if buf.size <= 2 * nbytes + (1 << 20):
                        return self._free.pop(i)
                    break
        return np.empty(nbytes, dtype=np.uint8)

    def put(self, buf: np.ndarray) -> None:
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.size)
            while sum(b.size for b in self._free) > self._keep:
                self._free.pop()


def _sync_file_range():
    """libc ``sync_file_range`` (Linux) through ctypes, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class _Writeback:
    """Streaming-write page-cache hygiene for one output file (advisory; errors are ignored).

    Every ``_WRITEBACK`` bytes the new range's writeback is started (``sync_file_range``,
    asynchronous), and the pages of the range started ``_WRITEBACK_LAG`` steps before - on
    disk by then - are dropped from the page cache (``posix_fadvise(DONTNEED)``, which skips
    pages still dirty).  Without this the kernel lets GBs of dirty output pile up before it
    starts writing, then throttles the writers to disk speed, and every output page is a newly
    allocated page - on a VM whose free memory is handed back to the host, first touching a
    page costs more than copying into it.  Measured on the development VM, 5 x 1.7 GB written
    from memory: 16-19 s without, 5-8 s with (and a third of the CPU time).  The outputs are
    not left in the page cache; this process never reads them.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.started = 0
        self.dropped = 0
        self.steps: collections.deque = collections.deque()

    def wrote(self, nbytes: int) -> None:
        self.written += nbytes
        if not _WRITEBACK or self.written - self.started < _WRITEBACK:
            return
        try:
            if _SYNC_FILE_RANGE is not None:
                _SYNC_FILE_RANGE(self.fd, self.started, self.written - self.started, _SYNC_FILE_RANGE_WRITE)
            self.started = self.written
            self.steps.append(self.written)
            while len(self.steps) > _WRITEBACK_LAG:
                end = self.steps.popleft()
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self.fd, self.dropped, end - self.dropped, os.POSIX_FADV_DONTNEED)
                self.dropped = end
        except (OSError, ValueError, TypeError):
            self.started = self.written


class _Writer:
    """Background threads writing queued buffers to their file handles, each handle's in order.

    Every output file gets its own thread (at most ``_WRITERS``; files share threads beyond
    that): buffered writes to one file are serialized by the kernel, writes to different files
    run in parallel.  At most ``max_bytes`` wait in the queues in total (a larger buffer waits
    until they are empty).  An item's ``done`` callback runs once every file it goes to has it
    written (or dropped after an error); ``write([], b"", done)`` runs ``done`` once everything
    queued before it is written.  Output files are written back as they grow and their
    written-back pages dropped (:class:`_Writeback`).
    """

    def __init__(self, max_bytes: int | None = None, threads: int | None = None) -> None:
        self._cv = threading.Condition()
        self._n = max(1, _WRITERS if threads is None else threads)
        self._queues: list[collections.deque] = []
        self._slots: dict[int, int] = {}  # id(handle) -> queue index
        self._pending = 0
        self._max = _WRITE_BUFFER if max_bytes is None else max_bytes
        self._closed = False
        self._error: BaseException | None = None
        self._writeback: dict[int, _Writeback] = {}
        self._threads: list[threading.Thread] = []

    def register(self, handles) -> None:
        """Give ``handles`` (the files of one shard) threads 0, 1, ... in order."""
        with self._cv:
            for i, handle in enumerate(handles):
                self._slots[id(handle)] = self._thread_for(i % self._n)
                self._writeback.pop(id(handle), None)

    def close_files(self, handles) -> None:
        """Close ``handles`` once everything queued so far is written (an error is re-raised
        by a later ``write``/``close``)."""
        def done() -> None:
            with self._cv:
                for handle in handles:
                    self._slots.pop(id(handle), None)
                    self._writeback.pop(id(handle), None)
            for handle in handles:
                handle.close()

        self.write([], b"", done=done)

    def _thread_for(self, slot: int) -> int:
        while len(self._queues) <= slot:  # start the threads up to this one
            self._queues.append(collections.deque())
            thread = threading.Thread(target=self._run, args=(len(self._queues) - 1,),
                                      name=f"mask-writer-{len(self._queues) - 1}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return slot

    def _slot(self, handle) -> int:
        slot = self._slots.get(id(handle))
        if slot is None:  # not registered: the next thread in turn
            slot = self._slots[id(handle)] = self._thread_for(len(self._slots) % self._n)
        return slot

    def _run(self, slot: int) -> None:
        queue = self._queues[slot]
        while True:
            with self._cv:
                while not queue and not self._closed:
                    self._cv.wait()
                if not queue:
                    return
                handles, buf, ticket = queue.popleft()
            if self._error is None:
                try:
                    for handle in handles:
                        handle.write(buf)
                        self._wrote(handle, ticket[1])
                except BaseException as e:  # reported by the next write() or close()
                    self._error = e
            done = None
            with self._cv:
                ticket[0] -= 1
                if ticket[0] == 0:  # the last queue holding this buffer
                    self._pending -= ticket[1]
                    done = ticket[2]
                    self._cv.notify_all()
            if done is not None:
                try:
                    done()
                except BaseException as e:  # e.g. closing a file failed to flush
                    self._error = self._error or e

    def _wrote(self, handle, nbytes: int) -> None:
        state = self._writeback.get(id(handle))
        if state is None:
            try:
                fd = handle.fileno()
            except (AttributeError, OSError, ValueError):
                return
            with self._cv:
                state = self._writeback.setdefault(id(handle), _Writeback(fd))
        state.wrote(nbytes)

    def write(self, handles, buf, done=None) -> None:
        nbytes = memoryview(buf).nbytes
        with self._cv:
            while self._pending and self._pending + nbytes > self._max and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            groups: dict[int, list] = {}
            for handle in handles:
                groups.setdefault(self._slot(handle), []).append(handle)
            if not groups:  # a marker: behind everything queued so far, on every queue
                groups = {slot: [] for slot in range(len(self._queues))}
            if not groups:
                if done is not None:
                    done()
                return
            ticket = [len(groups), nbytes, done]  # queues left, bytes, callback
            for slot, hs in groups.items():
                self._queues[slot].append((hs, buf, ticket))
            self._pending += nbytes
            self._cv.notify_all()

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a write error."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is queued and stop (error path; never raises)."""
        with self._cv:
            self._error = self._error or RuntimeError("aborted")
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()


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


def _read_pooled(fin, nbytes: int, buffers: _Buffers) -> tuple[np.ndarray, np.ndarray]:
    """``nbytes`` from ``fin`` into a pooled buffer: (the data as a uint8 view, the pooled buffer)."""
    base = buffers.get(nbytes)
    data = base[:nbytes]
    if fin.readinto(memoryview(data)) != nbytes:
        buffers.put(base)
        raise ValueError(f"corrupt or truncated safetensors file {fin.name}: unexpected end of data")
    return data, base


def _mask_shard(src: Path, outs: list[Path], ratios: list[float], inc, exc,
                buffers: _Buffers | None = None, writer: _Writer | None = None) -> list[dict]:
    """Mask one safetensors file into ``outs`` (one per ratio) in one pass; its stats rows.

    With ``writer`` (shared by the shards of one run, so that writing never pauses between
    shards) the writes are only queued: the writer closes the files once they are written, and
    the caller checks them with :func:`_check_sizes` after ``writer.close()``.
    """
    head, header = _read_header(src)
    buffers = _Buffers() if buffers is None else buffers
    data_start = len(head)
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    rows: list[dict] = []
    own = writer is None
    writer = _Writer() if own else writer
    handles: list = []
    queued_close = False
    try:
        for p in outs:
            handles.append(open(p, "wb"))
        writer.register(handles)
        writer.write(handles, head)
        pos = 0  # data bytes written so far (relative to data_start)
        with open(src, "rb") as fin:
            for name, info in entries:
                begin, end = info["data_offsets"]
                dtype, shape = info["dtype"], info["shape"]
                numel = math.prod(shape)
                if begin != pos:  # a gap in the data section (not written by safetensors): copy it
                    fin.seek(data_start + pos)
                    _copy_raw(fin, writer, handles, begin - pos, None, buffers)
                fin.seek(data_start + begin)
                if dtype in _BITS and len(shape) >= 2 and _matches(name, inc, exc):
                    raw, base = _read_pooled(fin, end - begin, buffers)
                    per_ratio = _mask_raw(raw, dtype, ratios, writer, handles, buffers)
                    # the unmasked ratio's writes are views of raw: recycle it once they are written
                    writer.write([], b"", done=lambda base=base: buffers.put(base))
                    rows += [dict(name=name, numel=numel, ratio=r, threshold=thr, zeros=zeros, masked=True,
                                  k=_num_masked(r, numel), dtype=dtype, shard=src.name)
                             for r, (thr, zeros) in zip(ratios, per_ratio)]
                else:
                    zeros = _copy_raw(fin, writer, handles, end - begin, dtype, buffers)
                    rows += [dict(name=name, numel=numel, ratio=r, threshold=None, zeros=zeros, masked=False,
                                  k=0, dtype=dtype, shard=src.name) for r in ratios]
                pos = end
        if own:
            writer.close()
        else:
            writer.close_files(handles)
            queued_close = True
    except BaseException:
        writer.abort()  # nothing more gets written: the files can be closed under it
        raise
    finally:
        if not queued_close:
            for h in handles:
                h.close()
    if own:
        _check_sizes(src, outs)
    return rows


def _check_sizes(src: Path, outs: list[Path]) -> None:
    size = src.stat().st_size
    for p in outs:
        if p.stat().st_size != size:
            raise RuntimeError(f"internal error: {p} has {p.stat().st_size} bytes, {src} has {size}")


def _mask_chunk(bits: np.ndarray, lo: int, hi: int, dtype: str, limits: list,
                buffers: _Buffers | None = None) -> tuple[list, list[int] | None]:
    """``bits[lo:hi]`` masked at every limit, in blocks of ``_BLOCK`` elements (all limits of a
    block while it is in the CPU cache).  Returns (outputs, zeros): ``outputs[i]`` is
    ``(array, pooled buffer or None)`` - a view of ``bits`` where ``limits[i]`` is None
    (unchanged), else a new array (from ``buffers`` when given); ``zeros`` (per limit) only for
    F64, else None.

    F32/F16/BF16: ``limits[i]`` is a magnitude bit pattern; |w| > lambda <=> magnitude bits >
    pattern, and ``(pattern - magnitude) >> (width - 1)`` in signed integers is all ones exactly
    there, so each output is ``bits & that`` - integer ops only, no float conversion.
    F64: ``limits[i]`` is lambda, compared in float32 as the contract says.
    """
    bits_t, sign_clear = _BITS[dtype]
    count = hi - lo
    outs: list = []
    for lim in limits:
        if lim is None:
            outs.append((bits[lo:hi], None))
        elif buffers is None:
            outs.append((np.empty(count, bits_t), None))
        else:
            base = buffers.get(count * bits.itemsize)
            outs.append((base[:count * bits.itemsize].view(bits_t), base))
    step = min(_BLOCK, count)
    if dtype == "F64":
        zeros = [0] * len(limits)
        keep = np.empty(step, dtype=bool)
        for s in range(lo, hi, _BLOCK):
            block = bits[s:min(s + _BLOCK, hi)]
            mag = block & bits_t(sign_clear)
            abs_f32 = _f64_abs32(mag)
            kp = keep[:block.size]
            for i, ((out, _), lim) in enumerate(zip(outs, limits)):
                if lim is None:
                    zeros[i] += block.size - int(np.count_nonzero(mag))
                    continue
                np.logical_not(np.less_equal(abs_f32, np.float32(lim)), out=kp)  # NaN kept
                zeros[i] += block.size - int(np.count_nonzero(kp))
                np.multiply(block, kp, out=out[s - lo:s - lo + block.size])
        return outs, zeros
    signed_t = np.int16 if bits_t is np.uint16 else np.int32
    shift = signed_t(8 * np.dtype(signed_t).itemsize - 1)
    limits_s = [None if lim is None else signed_t(lim) for lim in limits]
    mag_buf = np.empty(step, signed_t)
    sel_buf = np.empty(step, signed_t)
    for s in range(lo, hi, _BLOCK):
        block = bits[s:min(s + _BLOCK, hi)]
        mag = mag_buf[:block.size]
        sel = sel_buf[:block.size]
        np.bitwise_and(block.view(signed_t), signed_t(sign_clear), out=mag)
        for (out, _), lim in zip(outs, limits_s):
            if lim is None:
                continue
            np.subtract(lim, mag, out=sel)  # < 0 exactly where magnitude > pattern (no overflow: both >= 0)
            np.right_shift(sel, shift, out=sel)  # all ones there, else 0
            np.bitwise_and(block, sel.view(bits_t), out=out[s - lo:s - lo + block.size])
    return outs, None


def _mask_raw(raw, dtype: str, ratios: list[float], writer: _Writer, handles,
              buffers: _Buffers | None = None) -> list[tuple]:
    """Queue ``raw`` (bytes-like) masked at every ratio (handles[i] gets ratios[i]); [(threshold, zeros)] per ratio.

    The thresholds of all ratios come from one selection over the whole tensor (F32/F16/BF16:
    :func:`_select_bits`, which also gives the zero counts; F64: ``numpy.partition`` over the
    float32 magnitudes).  The masks are then applied in chunks of ``_MASK_CHUNK_BLOCKS`` blocks on
    the worker threads (:func:`_mask_chunk`) and queued for the writer in order; the unmasked
    ratio (k = 0) queues views of ``raw``, which must stay untouched until they are written.
    """
    bits_t, sign_clear = _BITS[dtype]
    bits = np.frombuffer(raw, bits_t)
    n = bits.size
    ks = [_num_masked(r, n) for r in ratios]
    if dtype == "F64":
        absw = _f64_abs32(bits & bits_t(sign_clear))
        values = _kth_smallest(absw, ks)  # reorders absw
        del absw
        lams = [values[k] if k > 0 else None for k in ks]
        limits = lams
        zeros = [0] * len(ratios)
    else:
        pattern, at_most, n_zero = _select_bits(bits, dtype, ks, count_zeros=any(k == 0 for k in ks))
        lams = [_pattern_value(pattern[k], dtype) if k > 0 else None for k in ks]
        limits = [pattern[k] if k > 0 else None for k in ks]
        zeros = [at_most[k] if k > 0 else n_zero for k in ks]
    chunk = _BLOCK * _MASK_CHUNK_BLOCKS
    tasks = (lambda lo=lo: _mask_chunk(bits, lo, min(lo + chunk, n), dtype, limits, buffers)
             for lo in range(0, n, chunk))
    for outs, chunk_zeros in _ordered(tasks):
        for i, ((out, base), handle) in enumerate(zip(outs, handles)):
            done = None if base is None or buffers is None else (lambda base=base: buffers.put(base))
            writer.write([handle], out, done=done)  # owned by the writer queue until written
            if chunk_zeros is not None:
                zeros[i] += chunk_zeros[i]
    return list(zip(lams, zeros))


def _copy_raw(fin, writer: _Writer, handles, nbytes: int, dtype: str | None,
              buffers: _Buffers | None = None) -> int:
    """Copy ``nbytes`` from ``fin`` to every handle in chunks; their zero count when ``dtype`` is given."""
    zeros = 0
    item = _ITEMSIZE.get(dtype, 1) if dtype else 1
    chunk = _CHUNK - _CHUNK % item
    left = nbytes
    while left > 0:
        if buffers is None:
            buf, done = _read(fin, min(chunk, left)), None
        else:
            buf, base = _read_pooled(fin, min(chunk, left), buffers)
            done = lambda base=base: buffers.put(base)  # noqa: E731
        writer.write(handles, buf, done=done)
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
    """Write ``out_root/masked_r<ratio>`` for every ratio ``r`` (Eq. 1-2, per-tensor thresholds).

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
    buffers = _Buffers()  # recycled read and output buffers, shared by all shards
    writer = _Writer()  # shared by all shards: writing goes on while the next shard starts
    try:
        for p in partials:
            if p.exists():
                shutil.rmtree(p)
            p.mkdir()
        for i, src in enumerate(files, 1):
            shard_rows = _mask_shard(src, [p / src.name for p in partials], rs, inc, exc, buffers, writer)
            rows += shard_rows
            if progress:
                n_total = len(shard_rows) // len(rs)
                n_masked = sum(1 for row in shard_rows if row["masked"]) // len(rs)
                print(f"[mask] {i}/{len(files)} {src.name}: {n_masked}/{n_total} tensors masked "
                      f"at {len(rs)} ratios ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        writer.close()  # everything written, every file closed
        for src in files:
            _check_sizes(src, [p / src.name for p in partials])
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
        writer.abort()
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
    if (args.ratios is None) == (args.r_max is None):
        raise ValueError("masters mask: give either --r-max (with --step) or --ratios")
    rs = _validate_ratios(args.ratios) if args.ratios is not None else _stage_ratios(args.r_max, args.step)
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
    p.add_argument("--r-max", type=float, default=None, help="largest masking ratio, in [0, 1)")
    p.add_argument("--step", type=float, default=None,
                   help="ratio decrement s between stages; r_max must be a multiple of it (needed if --r-max > 0)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="explicit ratios instead of --r-max/--step (the workflow masks one ratio per job)")
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
