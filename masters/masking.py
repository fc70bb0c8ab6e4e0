"""Magnitude masking of one tensor (paper Eq. 1-2, Sec. 3.1; METHOD.md section 1).

For a maskable weight tensor W with n entries and a masking ratio r (Eq. 1-2)::

    k = floor(r * n)
    lambda_r = the k-th smallest |w| of W          (Eq. 1, computed in float32)
    W_r = W * 1[|W| > lambda_r]                    (Eq. 2)

k = 0 leaves W unchanged.  The threshold is **per tensor** (the paper's "per layer"); a global
threshold is never used.  Entries with |w| <= lambda_r become (+)0, so at least k entries are
zero, exactly k when the magnitudes are distinct; entries that are already zero count as the
smallest.  lambda_r grows with r, so masks are nested: whatever is zeroed at r2 is zeroed at
every r1 > r2.  ``torch.quantile`` is never used (it fails above 2**24 elements): the
thresholds of all ratios of a tensor come from one exact selection pass.  NaN entries (a broken
checkpoint) sort above every number and are never zeroed; a threshold that would be NaN is an
error.

One implementation, on raw bits
-------------------------------
Selection and masking work on the raw little-endian bits of a tensor (numpy, integer ops), for
the checkpoint path (:mod:`masters.masked_teacher`, which reads the bits from disk) and for the
torch-facing :func:`thresholds` / :func:`mask_tensor` alike (thin wrappers that view a tensor's
storage as those bits).  With the sign bit cleared, IEEE bit patterns order exactly like the
magnitudes they encode (+0 < denormals < normals < inf < NaN), and for F32/F16/BF16 every such
pattern is exactly a float32 value, so "the k-th smallest float32 |w|" is "the float32 value of
the k-th smallest magnitude pattern" and "|w| <= lambda" is "magnitude pattern <= pattern of
lambda".  :func:`select_bits` finds the k-th smallest pattern of every ratio at once: for 16-bit
floats from one histogram of the 2**15 magnitude patterns (``np.bincount``) and its cumulative
sum (the first pattern whose cumulative count reaches k); for F32 by a two-pass radix select
(histogram of the high 16 magnitude bits, then of the low 16 bits inside each selected bucket).
Exact at any size, O(n), ties and zeros handled by construction; the cumulative counts also give
every ratio's zero count (the entries at or below its pattern).  F64 is selected with
``numpy.partition`` over its float32 magnitudes and compared in float32, as the contract says;
other floating torch dtypes (float8) are widened to float32, which holds each of their values
exactly.  :func:`mask_bits` applies the masks:
with ``m`` the magnitude bits and ``p`` the limit pattern, ``(p - m) >> (width-1)`` in signed
integers is all ones exactly where |w| > lambda, and the masked tensor is the bits AND that.

Which tensors are maskable is decided by name and shape (:func:`is_maskable`, the patterns
below): weights with ndim >= 2 of the decoder layers, vision blocks and the vision-to-language
projector(s), in both the hub and the in-memory naming of Qwen2/2.5/3-VL and InternVL (-HF);
never embeddings, ``lm_head``, norms or biases (InternVL's projector is masked as Qwen's patch
merger, its counterpart inside Qwen's vision tower).  Selection and masking run on the
:class:`Workers` threads of one call (numpy releases the GIL), shut down when it ends, error or not.  No knob of :class:`MaskingOptions` changes a result.
"""

from __future__ import annotations

import collections
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from masters.schedule import ratio_str

if TYPE_CHECKING:  # torch is imported lazily: the checkpoint path does not need it
    import torch

# Regexes (``re.search``) over tensor names.  A tensor is maskable when it has ndim >= 2, some
# include pattern matches and no exclude pattern matches.
DEFAULT_INCLUDE: list[str] = [
    r"(^|\.)layers\.\d+\.",  # language-model decoder layers: q/k/v/o_proj, gate/up/down_proj
    r"(^|\.)blocks\.\d+\.",  # vision-tower blocks: attn.qkv, attn.proj, mlp.*
    r"(^|\.)merger\.",  # vision patch merger MLP (mlp.0 / mlp.2, linear_fc1 / linear_fc2)
    r"(^|\.)deepstack_merger_list\.\d+\.",  # Qwen3-VL deepstack mergers
    r"(^|\.)vision_tower\.encoder\.layer\.\d+\.",  # InternVL vision layers: attention.*_proj, projection_layer, mlp.fc*
    r"(^|\.)multi_modal_projector\.",  # InternVL vision-to-language MLP (linear_1 / linear_2)
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

# Maskable safetensors dtypes -> (unsigned type of the same width, sign-cleared magnitude mask)
BITS = {
    "BF16": (np.uint16, 0x7FFF),
    "F16": (np.uint16, 0x7FFF),
    "F32": (np.uint32, 0x7FFF_FFFF),
    "F64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF),
}
_NAN_BITS = {"BF16": 0x7F81, "F16": 0x7C01, "F32": 0x7F80_0001}  # smallest NaN magnitude pattern


def default_threads() -> int:
    """The CPUs this process may run on (its affinity: a job's allotment), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class MaskingOptions:
    """Tuning knobs of masking; none of them changes a written byte or a statistic.

    ``threads``: worker threads for the histograms and masks (default: :func:`default_threads`;
    the CLI passes the job's ``--threads``).  ``block``: elements per block, small enough that a
    block and its mask stay in the CPU cache.  ``chunk_blocks``: blocks per masking task handed
    to a worker; up to ``threads + 1`` tasks run ahead of the writes, so the masked chunks in
    flight are about ``(threads + 1) x block x chunk_blocks`` elements.  ``copy_chunk``: bytes
    per read when a tensor is copied unmasked.  ``writeback``: start writing the output file back
    to disk every this many bytes and drop the pages written back
    (:class:`masters.safetensors_stream.Writeback`; 0: leave it to the kernel).
    """

    threads: int = field(default_factory=default_threads)
    block: int = 1 << 18
    chunk_blocks: int = 8
    copy_chunk: int = 16 << 20
    writeback: int = 32 << 20

    def __post_init__(self) -> None:
        for name in ("threads", "block", "chunk_blocks", "copy_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MaskingOptions.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.writeback < 0:
            raise ValueError(f"MaskingOptions.writeback must be >= 0, got {self.writeback!r}")


# --------------------------------------------------------------------------------------------
# Names and ratios


def compile_patterns(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    """``patterns`` (a regex or a list of them) compiled; a bad one raises ``ValueError`` naming ``what``."""
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"invalid {what} regex {p!r}: {e}") from None
    return compiled


def name_filter(include: Iterable[str] | None, exclude: Iterable[str] | None):
    """The compiled (include, exclude) lists; ``None`` -> :data:`DEFAULT_INCLUDE` / :data:`DEFAULT_EXCLUDE`."""
    return (compile_patterns(DEFAULT_INCLUDE if include is None else include, "include"),
            compile_patterns(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude"))


def name_matches(name: str, inc: list[re.Pattern], exc: list[re.Pattern]) -> bool:
    return any(p.search(name) for p in inc) and not any(p.search(name) for p in exc)


def is_maskable(name: str, shape: Sequence[int], include: Iterable[str] | None = None,
                exclude: Iterable[str] | None = None) -> bool:
    """Whether tensor ``name`` of ``shape`` is masked: ndim >= 2, matches an ``include`` regex and
    no ``exclude`` regex (``re.search``; ``None`` -> :data:`DEFAULT_INCLUDE` / :data:`DEFAULT_EXCLUDE`).
    """
    return len(shape) >= 2 and name_matches(name, *name_filter(include, exclude))


def ratio_dirname(r: float) -> str:
    """The directory of the teacher masked at ratio ``r``: ``masked_r0.20``, ``masked_r0.175``
    (its exact ratio, :func:`masters.schedule.ratio_str`)."""
    return f"masked_r{ratio_str(r)}"


def validate_ratios(ratios: Iterable[float], unique_dirs: bool = True) -> list[float]:
    """``ratios`` as floats in [0, 1) (-0.0 -> 0.0); with ``unique_dirs``, no two may share a
    :func:`ratio_dirname` (a ratio with more decimals than a name holds is rejected)."""
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


def num_masked(r: float, n: int) -> int:
    """k = floor(r*n), with r read as the decimal it prints as (0.29 * 100 -> 29, not 28)."""
    return math.floor(Fraction(repr(float(r))) * n)


# --------------------------------------------------------------------------------------------
# Worker threads


class Workers:
    """``options.threads`` worker threads for one call (default :class:`MaskingOptions`), shut
    down when the ``with`` block ends, error or not; with one thread everything runs inline."""

    def __init__(self, options: MaskingOptions | None = None) -> None:
        self.options = options or MaskingOptions()
        self.threads = self.options.threads
        self._pool = None
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="mask-worker")

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map_parts(self, fn, n: int) -> list:
        """``[fn(lo, hi) for (lo, hi) in parts]``: n elements cut into whole blocks, one part per thread."""
        block = self.options.block
        if self._pool is None or n < 2 * block:
            return [fn(0, n)]
        blocks = -(-n // block)
        cuts = [min(n, (blocks * i // self.threads) * block) for i in range(self.threads + 1)]
        futures = [self._pool.submit(fn, lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
        return [f.result() for f in futures]

    def ordered(self, tasks: Iterable) -> Iterable:
        """Results of the callables ``tasks``, in order; up to ``threads + 1`` of them run ahead."""
        if self._pool is None:
            for task in tasks:
                yield task()
            return
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append(self._pool.submit(task))
                if len(pending) > self.threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


# --------------------------------------------------------------------------------------------
# Exact selection (Eq. 1)


def _high16(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """High 16 bits of the magnitude (sign cleared) of uint32 ``bits``, into intp ``out``."""
    np.right_shift(bits, np.uint32(16), out=out)
    np.bitwise_and(out, 0x7FFF, out=out)
    return out


def _hist(bits: np.ndarray, workers: Workers, buckets: Sequence[int] | None = None):
    """Counts (int64) of the magnitude patterns of ``bits``.

    uint16 ``bits``: all 2**15 patterns (sign cleared).  uint32 without ``buckets``: the high
    16 bits of the magnitude (2**15 buckets); with ``buckets``: ``{b: counts of the low 16 bits
    (2**16) of the entries whose high magnitude bits are b}``, all buckets in one pass.  Blocks
    of ``options.block`` elements, parts of the tensor on the worker threads.
    """
    size, step = 1 << 15, workers.options.block

    def part(lo: int, hi: int):
        h = np.zeros(size, np.int64) if buckets is None else {b: np.zeros(1 << 16, np.int64) for b in buckets}
        buf = np.empty(min(step, hi - lo), np.intp)  # bincount counts intp; widen once, in cache
        for s in range(lo, hi, step):
            block = bits[s:min(s + step, hi)]
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

    parts = workers.map_parts(part, bits.size)
    if buckets is None:
        return sum(parts)
    return {b: sum(p[b] for p in parts) for b in buckets}


def select_bits(bits: np.ndarray, dtype: str, ks: Iterable[int], workers: Workers | None = None):
    """Exact k-th smallest magnitude pattern of raw ``bits`` (F32/F16/BF16) for every k >= 1.

    Returns ``(pattern, at_most)``: ``pattern[k]`` the k-th smallest magnitude bit pattern (sign
    cleared), ``at_most[k]`` the number of entries whose magnitude is <= it (the zeros that
    masking at it leaves).  A NaN pattern raises ``ValueError``.
    """
    workers = workers or Workers(MaskingOptions(threads=1))
    ks = sorted({int(k) for k in ks if k > 0})
    if ks and ks[-1] > bits.size:
        raise ValueError(f"k = {ks[-1]} > {bits.size} entries")
    pattern: dict[int, int] = {}
    at_most: dict[int, int] = {}
    if dtype in ("BF16", "F16"):
        if ks:
            cum = np.cumsum(_hist(bits, workers))
            for k, p in zip(ks, np.searchsorted(cum, ks, side="left")):
                pattern[k], at_most[k] = int(p), int(cum[p])
    elif dtype == "F32":
        high = np.cumsum(_hist(bits, workers)) if ks else None
        below: dict[int, int] = {}
        bucket_of: dict[int, int] = {}
        for k in ks:
            b = int(np.searchsorted(high, k, side="left"))
            bucket_of[k], below[k] = b, (int(high[b - 1]) if b > 0 else 0)
        wanted = sorted(set(bucket_of.values()))
        low = {b: np.cumsum(h) for b, h in (_hist(bits, workers, wanted).items() if wanted else ())}
        for k in ks:
            b = bucket_of[k]
            lo = int(np.searchsorted(low[b], k - below[k], side="left"))
            pattern[k], at_most[k] = (b << 16) | lo, below[k] + int(low[b][lo])
    else:
        raise ValueError(f"no bit-pattern selection for dtype {dtype}")
    if any(p >= _NAN_BITS[dtype] for p in pattern.values()):
        raise ValueError("masking threshold is NaN: the tensor holds NaN weights")
    return pattern, at_most


def pattern_value(pattern: int, dtype: str) -> float:
    """The (float32-exact) value of a magnitude bit pattern of ``dtype``."""
    if dtype == "BF16":  # bf16 = the top half of a float32
        return float(np.array(pattern << 16, dtype=np.uint32).view(np.float32))
    if dtype == "F16":
        return float(np.array(pattern, dtype=np.uint16).view(np.float16))
    return float(np.array(pattern, dtype=np.uint32).view(np.float32))  # F32


def _kth_smallest(absw: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """The k-th smallest value of ``absw`` for every k >= 1 (``absw`` is reordered in place).

    One selection pass: ``numpy.partition`` at the largest k over the whole array, then each
    smaller k inside the prefix that the previous partition left below it (that prefix holds
    exactly the smallest values).  Exact, like sorting.  Used for F64 (compared in float32).
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


def select(bits: np.ndarray, dtype: str, ratios: Sequence[float], workers: Workers | None = None) -> list[tuple]:
    """Eq. 1 for every ratio from one selection over raw ``bits``: ``[(threshold, limit, zeros)]``.

    ``threshold`` is lambda_r, ``limit`` what :func:`mask_bits` compares with (a magnitude bit
    pattern; for F64 lambda_r itself), ``zeros`` the zero count of the masked tensor (``None``
    for F64: counted while masking); all three ``None`` where k = 0 (nothing is masked).
    """
    bits_t, sign_clear = BITS[dtype]
    ks = [num_masked(r, bits.size) for r in ratios]
    if dtype == "F64":
        values = _kth_smallest((bits & bits_t(sign_clear)).view(np.float64).astype(np.float32), ks)  # |w| in f32
        return [(values[k], values[k], None) if k else (None, None, None) for k in ks]
    pattern, at_most = select_bits(bits, dtype, ks, workers=workers)
    return [(pattern_value(pattern[k], dtype), pattern[k], at_most[k]) if k else (None, None, None) for k in ks]


# --------------------------------------------------------------------------------------------
# Masking (Eq. 2)


def mask_bits(bits: np.ndarray, lo: int, hi: int, dtype: str, limit: int | float, block: int,
              buffers=None) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """``bits[lo:hi]`` masked at ``limit`` (:func:`select`, :func:`limit_of`), in blocks of
    ``block`` elements.  Returns ``(masked, pooled buffer or None, zeros)``: a new array (from
    ``buffers.get(nbytes)`` when given), and its zero count for F64 only (else None).

    F32/F16/BF16: ``limit`` is a magnitude bit pattern (-1: keep all); |w| > lambda <=>
    magnitude bits > pattern, and ``(pattern - magnitude) >> (width - 1)`` in signed integers is
    all ones exactly there, so the output is ``bits & that`` - integer ops only.
    F64: ``limit`` is lambda, compared in float32 as the contract says (NaN kept).
    """
    bits_t, sign_clear = BITS[dtype]
    count = hi - lo
    base = None if buffers is None else buffers.get(count * bits.itemsize)
    out = np.empty(count, bits_t) if base is None else base[:count * bits.itemsize].view(bits_t)
    step = min(block, count)
    if dtype == "F64":
        zeros = 0
        keep = np.empty(step, dtype=bool)
        for s in range(lo, hi, block):
            chunk = bits[s:min(s + block, hi)]
            kp = keep[:chunk.size]
            abs32 = (chunk & bits_t(sign_clear)).view(np.float64).astype(np.float32)  # compared in float32
            np.logical_not(np.less_equal(abs32, np.float32(limit)), out=kp)  # NaN kept
            zeros += chunk.size - int(np.count_nonzero(kp))
            np.multiply(chunk, kp, out=out[s - lo:s - lo + chunk.size])
        return out, base, zeros
    signed_t = np.int16 if bits_t is np.uint16 else np.int32
    shift = signed_t(8 * np.dtype(signed_t).itemsize - 1)
    lim = signed_t(limit)
    mag_buf = np.empty(step, signed_t)
    sel_buf = np.empty(step, signed_t)
    for s in range(lo, hi, block):
        chunk = bits[s:min(s + block, hi)]
        mag = mag_buf[:chunk.size]
        sel = sel_buf[:chunk.size]
        np.bitwise_and(chunk.view(signed_t), signed_t(sign_clear), out=mag)
        np.subtract(lim, mag, out=sel)  # < 0 exactly where magnitude > pattern (no overflow: both >= -1)
        np.right_shift(sel, shift, out=sel)  # all ones there, else 0
        np.bitwise_and(chunk, sel.view(bits_t), out=out[s - lo:s - lo + chunk.size])
    return out, base, None


def limit_of(threshold: float, dtype: str) -> int | float:
    """The :func:`mask_bits` limit of any threshold: the largest magnitude pattern of ``dtype``
    whose value is <= float32(threshold) (-1 below zero), so that pattern <= limit <=> |w| <=
    lambda; for F64 float32(threshold) itself.  A NaN threshold is an error."""
    lam = np.float32(threshold)
    if np.isnan(lam):
        raise ValueError("masking threshold is NaN")
    if dtype == "F64":
        return float(lam)
    if lam < 0:
        return -1
    f32 = int(np.array(lam).view(np.uint32))
    if dtype == "F32":
        return f32
    if dtype == "BF16":
        return f32 >> 16  # truncating a float32 to its top half rounds a magnitude down
    with np.errstate(over="ignore"):  # above the largest finite float16: inf, then one below
        p = int(np.array(lam, np.float16).view(np.uint16))  # rounded to nearest, maybe above lambda
    return p - 1 if pattern_value(p, dtype) > lam else p


# --------------------------------------------------------------------------------------------
# Torch tensors: thin wrappers over the raw-bits core


def _tensor_bits(tensor: "torch.Tensor") -> tuple[np.ndarray, str, "torch.dtype"]:
    """Flat raw bits of ``tensor`` (a copy only where needed), its safetensors dtype, and the torch
    dtype those bits hold: float8 and other floating dtypes are widened to float32 (exact)."""
    import torch

    if not tensor.is_floating_point():
        raise TypeError(f"only floating-point tensors can be masked, got {tensor.dtype}")
    specs = {torch.bfloat16: ("BF16", torch.int16), torch.float16: ("F16", torch.int16),
             torch.float32: ("F32", torch.int32), torch.float64: ("F64", torch.int64)}
    t = tensor.detach().cpu()
    if t.dtype not in specs:
        t = t.to(torch.float32)
    dtype, int_t = specs[t.dtype]
    bits = t.contiguous().reshape(-1).view(int_t).numpy().view(BITS[dtype][0])
    return bits, dtype, t.dtype


def thresholds(tensor: "torch.Tensor", ratios: Iterable[float],
               options: MaskingOptions | None = None) -> dict[float, float | None]:
    """Per-tensor thresholds lambda_r (Eq. 1) of every ratio, from one selection pass
    (:func:`select`): ``None`` where k = floor(r*n) = 0, else the k-th smallest float32 |w|."""
    rs = validate_ratios(ratios, unique_dirs=False)
    bits, dtype, _ = _tensor_bits(tensor)
    with Workers(options) as workers:
        return {r: thr for r, (thr, _, _) in zip(rs, select(bits, dtype, rs, workers))}


def mask_tensor(tensor: "torch.Tensor", threshold: float | None,
                options: MaskingOptions | None = None) -> "torch.Tensor":
    """Eq. 2: ``w * 1[|w| > threshold]`` (comparison in float32, :func:`mask_bits`); dtype, shape
    and device are kept.  ``threshold=None`` (k = 0) returns ``tensor`` itself.  Zeroed entries
    are +0.0; NaN entries are kept."""
    if threshold is None:
        return tensor
    import torch

    bits, dtype, held = _tensor_bits(tensor)
    block = (options or MaskingOptions()).block
    out, _, _ = mask_bits(bits, 0, bits.size, dtype, limit_of(threshold, dtype), block)
    signed = out.view(np.dtype(f"i{out.itemsize}"))  # torch has no unsigned views of float storage
    masked = torch.from_numpy(signed).view(held).reshape(tensor.shape)
    return masked.to(dtype=tensor.dtype, device=tensor.device)
