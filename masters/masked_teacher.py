"""Masked teacher checkpoints: every ratio of a teacher in one pass (METHOD.md section 1).

:func:`mask_checkpoint` writes, for every ratio, a complete HF checkpoint directory
``masked_r<ratio>``, named by its exact ratio (e.g. ``masked_r0.175``), with the weights in the
teacher's shard layout, index, safetensors header and metadata, every non-weight file of the
teacher copied, and ``masking_stats.csv`` with the per-tensor thresholds and achieved zeros.
The method (Eq. 1-2: which tensors, k, the exact per-tensor threshold, the mask) is
:mod:`masters.masking`; the file handling is :mod:`masters.safetensors_stream`.  Only
F32/F16/BF16/F64 tensors are masked; any other dtype (fp8, integers) is copied unchanged.

One pass, every ratio
---------------------
Every shard is validated and then streamed one tensor at a time (the whole model is never
loaded).  A maskable tensor's raw bytes are read once, the thresholds of all ratios selected
from them (:func:`masters.masking.select`), and its masked bytes queued for every ratio's
output file (:func:`masters.masking.mask_bits` on the worker threads, in order) before the next
tensor is read; a tensor that is not masked is copied as raw bytes in ``copy_chunk`` pieces,
byte-identical by construction.  Masking r ratios in one call rather than r calls saves r - 1
reads of the teacher and r - 1 selections per tensor.  Measured with
``bench/masking_one_pass.py`` (1.47 GB BF16 checkpoint in 3 shards, ratios 0.05/0.1/0.15/0.2,
2 shared cores, fastest of 2): one call 8.95 s wall / 7.9 s CPU against 19.1 s / 17.7 s for
four single-ratio calls with the teacher evicted from the page cache before each call (47 % of
the wall time), 7.1 s against 14.5 s with it cached (49 %); peak RSS 0.65 GiB either way (the
code before the split: 40 % and 53 %).  So the multi-ratio path is kept: the workflow should
mask all ratios of a teacher in one job.

Memory: about two raw copies of the largest maskable tensor (the one being masked and the
previous one, still being written), at most ``write_buffer`` bytes queued for the writers, the
masks in flight (``(threads + 1) x ratios x block x chunk_blocks`` elements) and the recycled
buffers - independent of shard size.  Outputs are written to hidden
``.masked_r*.partial-<pid>`` directories and renamed into place at the end, so an interrupted
run never leaves a half-written ``masked_r*`` directory.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from masters.masking import (BITS, MaskingOptions, Workers, mask_bits, name_filter, name_matches, num_masked,
                             ratio_dirname, select, validate_ratios)
from masters.safetensors_stream import (ITEMSIZE, Buffers, Writer, check_sizes, copy_other_files, read_chunks,
                                        read_header, read_pooled, weight_files)
from masters.schedule import ratios as schedule_ratios  # Eq. 3 ratio list (METHOD.md section 2)

STATS_FILE = "masking_stats.csv"
STATS_COLUMNS = ["name", "numel", "ratio", "threshold", "zeros", "masked", "k", "sparsity", "dtype", "shard"]


@dataclass
class _Run:
    """What every shard of one :func:`mask_checkpoint` call shares."""

    options: MaskingOptions
    workers: Workers
    writer: Writer
    buffers: Buffers


def count_zeros(buf, dtype: str) -> int:
    """Number of (+/-) zero elements in raw little-endian bytes of safetensors ``dtype`` (-1: unknown dtype)."""
    if dtype in BITS:
        bits_t, sign_clear = BITS[dtype]
        bits = np.frombuffer(buf, bits_t)
        return bits.size - int(np.count_nonzero(bits & bits_t(sign_clear)))
    if dtype in ("F8_E4M3", "F8_E5M2"):
        bits = np.frombuffer(buf, np.uint8)
        return bits.size - int(np.count_nonzero(bits & np.uint8(0x7F)))
    if dtype in ITEMSIZE:
        bits = np.frombuffer(buf, {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[ITEMSIZE[dtype]])
        return bits.size - int(np.count_nonzero(bits))
    return -1


def _mask_raw(raw, dtype: str, ratios: list[float], handles, run: _Run) -> list[tuple]:
    """Queue ``raw`` (bytes-like) masked at every ratio (handles[i] gets ratios[i]); [(threshold, zeros)] per ratio.

    The masks are applied in chunks of ``block x chunk_blocks`` elements on the worker threads
    and queued for the writer in order; the unmasked ratio (k = 0) queues views of ``raw``,
    which must stay untouched until they are written.
    """
    bits = np.frombuffer(raw, BITS[dtype][0])
    n = bits.size
    chosen = select(bits, dtype, ratios, run.workers)
    limits = [limit for _, limit, _ in chosen]
    zeros = [z or 0 for _, _, z in chosen]  # F64: counted while masking
    block, buffers = run.options.block, run.buffers
    chunk = block * run.options.chunk_blocks
    tasks = (lambda lo=lo: mask_bits(bits, lo, min(lo + chunk, n), dtype, limits, block, buffers)
             for lo in range(0, n, chunk))
    for outs, chunk_zeros in run.workers.ordered(tasks):
        for i, ((out, base), handle) in enumerate(zip(outs, handles)):
            done = None if base is None else (lambda base=base: buffers.put(base))
            run.writer.write([handle], out, done=done)  # owned by the writer queue until written
            if chunk_zeros is not None:
                zeros[i] += chunk_zeros[i]
    return [(threshold, z) for (threshold, _, _), z in zip(chosen, zeros)]


def _copy_raw(fin, nbytes: int, dtype: str | None, handles, run: _Run) -> int:
    """Copy ``nbytes`` from ``fin`` to every handle in chunks; their zero count when ``dtype`` is given."""
    item = ITEMSIZE.get(dtype, 1) if dtype else 1
    chunk = max(item, run.options.copy_chunk - run.options.copy_chunk % item)
    zeros = 0
    for data, base in read_chunks(fin, nbytes, chunk, run.buffers):
        run.writer.write(handles, data, done=lambda base=base: run.buffers.put(base))
        if dtype:
            z = count_zeros(data, dtype)
            zeros = -1 if (z < 0 or zeros < 0) else zeros + z
    return zeros


def _mask_shard(src: Path, outs: list[Path], ratios: list[float], names, run: _Run) -> list[dict]:
    """Queue one safetensors file masked at every ratio into ``outs`` (one per ratio); its stats rows.

    The writer closes the files once they are written; the caller checks them with
    :func:`masters.safetensors_stream.check_sizes` after ``writer.close()``.
    """
    head, entries = read_header(src)
    rows: list[dict] = []
    handles: list = []
    try:
        for p in outs:
            handles.append(open(p, "wb"))
        run.writer.register(handles)
        run.writer.write(handles, head)
        pos = 0  # data bytes written so far (relative to the end of the header)
        with open(src, "rb") as fin:
            for name, info in entries:
                (begin, end), dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
                if begin != pos:  # a gap in the data section (not written by safetensors): copy it
                    fin.seek(len(head) + pos)
                    _copy_raw(fin, begin - pos, None, handles, run)
                fin.seek(len(head) + begin)
                row = dict(name=name, numel=math.prod(shape), dtype=dtype, shard=src.name)
                if dtype in BITS and len(shape) >= 2 and name_matches(name, *names):
                    raw, base = read_pooled(fin, end - begin, run.buffers)
                    per_ratio = _mask_raw(raw, dtype, ratios, handles, run)
                    # the unmasked ratio's writes are views of raw: recycle it once they are written
                    run.writer.write([], b"", done=lambda base=base: run.buffers.put(base))
                    rows += [dict(row, ratio=r, threshold=thr, zeros=zeros, masked=True, k=num_masked(r, row["numel"]))
                             for r, (thr, zeros) in zip(ratios, per_ratio)]
                else:
                    zeros = _copy_raw(fin, end - begin, dtype, handles, run)
                    rows += [dict(row, ratio=r, threshold=None, zeros=zeros, masked=False, k=0) for r in ratios]
                pos = end
    except BaseException:
        run.writer.abort()  # nothing more gets written: the files can be closed under it
        for h in handles:
            h.close()
        raise
    run.writer.close_files(handles)
    return rows


def _stats_frame(rows: list[dict]) -> pd.DataFrame:
    stats = pd.DataFrame(rows, columns=STATS_COLUMNS)
    stats["threshold"] = stats["threshold"].astype("float64")
    stats["sparsity"] = stats["zeros"] / stats["numel"].where(stats["numel"] > 0)
    return stats


def _progress(i: int, files: list[Path], rows: list[dict], n_ratios: int, t0: float) -> None:
    n_total = len(rows) // n_ratios
    n_masked = sum(1 for row in rows if row["masked"]) // n_ratios
    print(f"[mask] {i}/{len(files)} {files[i - 1].name}: {n_masked}/{n_total} tensors masked "
          f"at {n_ratios} ratios ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)


def mask_checkpoint(teacher_dir: str | os.PathLike, out_root: str | os.PathLike, ratios: Iterable[float],
                    include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                    progress: bool = True, options: MaskingOptions | None = None) -> pd.DataFrame:
    """Write ``out_root/masked_r<ratio>`` for every ratio ``r`` (Eq. 1-2, per-tensor thresholds).

    Each output is a complete HF checkpoint: the teacher's safetensors files under the same
    names, with the same header (tensor order, dtypes, shapes, offsets, ``__metadata__``) and the
    same index json, maskable tensors masked and every other tensor byte-identical; every
    non-weight file of the teacher copied (other weight formats such as ``*.bin`` are not);
    ``masking_stats.csv`` with that ratio's rows.  An existing ``masked_r*`` directory of the
    same ratio is replaced.  ``options``: the tuning knobs (:class:`masters.masking.MaskingOptions`);
    the worker and writer threads are shut down before this returns or raises.

    Returns the stats of all ratios, one row per (tensor, ratio), columns :data:`STATS_COLUMNS`:
    ``threshold`` (NaN where k = 0 or not masked), ``zeros`` (zero entries in the written tensor),
    ``masked`` (selected for masking: maskable name, shape and dtype), ``k`` = floor(r*n),
    ``sparsity`` = zeros / numel.  One pass over the input; see the module docstring for memory.
    """
    opts = options or MaskingOptions()
    teacher, out_root = Path(teacher_dir), Path(out_root)
    rs = validate_ratios(ratios)
    names = name_filter(include, exclude)
    files = weight_files(teacher)
    for f in files:  # validate every input before writing anything
        read_header(f)
    out_root.mkdir(parents=True, exist_ok=True)
    partials = [out_root / f".{ratio_dirname(r)}.partial-{os.getpid()}" for r in rs]
    t0 = time.time()
    try:
        for p in partials:
            shutil.rmtree(p, ignore_errors=True)
            p.mkdir()
        rows: list[dict] = []
        with Workers(opts) as workers, Writer(opts.write_buffer, opts.writers, opts.writeback) as writer:
            run = _Run(opts, workers, writer, Buffers())
            for i, src in enumerate(files, 1):
                shard_rows = _mask_shard(src, [p / src.name for p in partials], rs, names, run)
                rows += shard_rows
                if progress:
                    _progress(i, files, shard_rows, len(rs), t0)
            writer.close()  # everything written, every file closed
        for src in files:
            check_sizes(src, [p / src.name for p in partials])
        stats = _stats_frame(rows)
        _finish(teacher, out_root, rs, partials, stats)
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


def _finish(teacher: Path, out_root: Path, ratios: list[float], partials: list[Path], stats: pd.DataFrame) -> None:
    """Complete every partial directory (non-weight files, stats CSV) and rename it into place."""
    skip = {out_root.resolve(), *(p.resolve() for p in partials)}
    for r, p in zip(ratios, partials):
        copy_other_files(teacher, p, skip)
        stats[stats["ratio"] == r].to_csv(p / STATS_FILE, index=False)
    for r, p in zip(ratios, partials):
        final = out_root / ratio_dirname(r)
        if final.exists():
            shutil.rmtree(final)
        os.replace(p, final)


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
    rs = validate_ratios(args.ratios) if args.ratios is not None else _stage_ratios(args.r_max, args.step)
    options = MaskingOptions() if args.threads is None else MaskingOptions(threads=args.threads)
    stats = mask_checkpoint(args.teacher, args.out, rs, include=args.include, exclude=args.exclude,
                            progress=not args.quiet, options=options)
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
                    "r_k = r_max - k*step down to 0, with per-tensor magnitude thresholds, in one "
                    "pass over the teacher.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory (safetensors, single file or sharded)")
    p.add_argument("--r-max", type=float, default=None, help="largest masking ratio, in [0, 1)")
    p.add_argument("--step", type=float, default=None,
                   help="ratio decrement s between stages; r_max must be a multiple of it (needed if --r-max > 0)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="explicit ratios instead of --r-max/--step (all written in one pass over the teacher)")
    p.add_argument("--out", required=True, help="output root: receives one masked_r<ratio> directory per ratio")
    p.add_argument("--include", nargs="+", default=None, metavar="REGEX",
                   help="regexes of maskable tensor names; replace the defaults (LM and vision linear layers)")
    p.add_argument("--exclude", nargs="+", default=None, metavar="REGEX",
                   help="regexes of tensor names never masked; replace the defaults (embeddings, lm_head, "
                        "norms, biases, patch/positional embeddings, rotary)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="worker threads for threshold selection and masking (default: the CPUs this process "
                        "may run on); the workflow passes the job's threads")
    p.add_argument("--stats", default=None, metavar="CSV", help="also write the stats of all ratios to this CSV")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress on stderr")
    p.set_defaults(func=cmd_mask)
    return p
