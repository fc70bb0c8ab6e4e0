"""Masked teacher checkpoints: one teacher at one ratio per call (METHOD.md section 1).

:func:`mask_checkpoint` writes a complete HF checkpoint directory ``masked_r<ratio>``, named by
its exact ratio (e.g. ``masked_r0.175``), with the weights in the teacher's shard layout, index,
safetensors header and metadata, every non-weight file of the teacher copied, and
``masking_stats.csv`` with the per-tensor thresholds and achieved zeros.  The method (Eq. 1-2:
which tensors, k, the exact per-tensor threshold, the mask) is :mod:`masters.masking`; the file
handling is :mod:`masters.safetensors_stream`.  Only F32/F16/BF16/F64 tensors are masked; any
other dtype (fp8, integers) is copied unchanged.

Every shard is validated and then streamed one tensor at a time (the whole model is never
loaded), one output file per input shard.  A maskable tensor's raw bytes are read, its
threshold selected (:func:`masters.masking.select`) and its mask applied in chunks on the worker
threads (:func:`masters.masking.mask_bits`, up to ``threads + 1`` chunks ahead) while the masked
chunks are written in order; a tensor that is not masked (or has k = 0) is copied as raw bytes
in ``copy_chunk`` pieces, byte-identical by construction.

One ratio per call: the decision and its figures
------------------------------------------------
An earlier version wrote every ratio of a teacher in one pass (one read and one selection per
tensor for all ratios).  ``bench/masking_one_pass.py`` (at b9809b2; 1.47 GB BF16 in 3 shards, ratios
0.05-0.2, 2 shared cores) measured one call at 47 % of the wall time of four single-ratio calls
with the teacher evicted before each call (8.95 s vs 19.1 s) and 49 % with it cached (7.1 s vs
14.5 s), peak RSS 0.65 GiB both.  The workflow nevertheless runs one job per (teacher, ratio)
(``rules/mask.smk``), so that path was dropped with its machinery (a limit list per tensor, one
file handle per ratio, writer threads per output file): a job writing every ratio would, when a
ratio is added (a new r_max ablation), delete and rewrite every ratio's directory - Snakemake
removes a job's outputs before it runs - and so re-run everything downstream of that teacher;
per-ratio jobs run in parallel on a cluster; and at paper scale masking is write-bound (10 x
144 GB written either way), so one read saves far less than on a page-cached 1.5 GB test.
``masters mask --ratios`` with several ratios simply loops.

``bench/bench_masking.py`` (0.75 GB BF16 in 2 shards, ratio 0.2, 2 shared cores, fastest of 3,
wall until the output is synced to disk): 1.67 s wall / 1.97 s CPU with the teacher in the page
cache (0.45 GB/s; copying the checkpoint: 0.59 s), 2.44 s / 2.18 s evicted (0.31 GB/s; copy
0.91 s); peak RSS 0.65 GiB.  The code at 60b21a4 called with one ratio: 1.70 s and 2.18 s, the
same within noise, and its outputs are byte-identical.  Writes are synchronous: a background
writer thread with a bounded queue measured no faster (same bench, before syncs were timed:
1.76 s vs 1.67 s cached, 2.75 s vs 2.46 s evicted).

Memory: one raw copy of the largest maskable tensor, the masked chunks in flight (``(threads +
1) x block x chunk_blocks`` elements) and the recycled buffers - independent of shard size.  The
output is written to a hidden ``.masked_r*.partial-<pid>`` directory and renamed into place at
the end, so an interrupted run never leaves a half-written ``masked_r*`` directory.
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
from masters.safetensors_stream import (ITEMSIZE, Buffers, Writer, check_size, copy_other_files, read_chunks,
                                        read_header, read_pooled, weight_files)
from masters.schedule import ratios as schedule_ratios  # Eq. 3 ratio list (METHOD.md section 2)

STATS_FILE = "masking_stats.csv"
STATS_COLUMNS = ["name", "numel", "ratio", "threshold", "zeros", "masked", "k", "sparsity", "dtype", "shard"]


@dataclass
class _Run:
    """What every shard of one :func:`mask_checkpoint` call shares."""

    ratio: float
    names: tuple
    options: MaskingOptions
    workers: Workers
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


def _mask_raw(raw, dtype: str, writer: Writer, run: _Run) -> tuple[float, int]:
    """Write ``raw`` (bytes-like, k >= 1 entries to mask) masked at the run's ratio; (threshold, zeros).

    The mask is applied in chunks of ``block x chunk_blocks`` elements on the worker threads (up
    to ``threads + 1`` chunks ahead) while the masked chunks are written in order.
    """
    bits = np.frombuffer(raw, BITS[dtype][0])
    n = bits.size
    [(threshold, limit, zeros)] = select(bits, dtype, [run.ratio], run.workers)
    zeros = zeros or 0  # F64: counted while masking
    block, buffers = run.options.block, run.buffers
    chunk = block * run.options.chunk_blocks
    tasks = (lambda lo=lo: mask_bits(bits, lo, min(lo + chunk, n), dtype, limit, block, buffers)
             for lo in range(0, n, chunk))
    for out, base, chunk_zeros in run.workers.ordered(tasks):
        writer.write(out)
        buffers.put(base)
        zeros += chunk_zeros or 0
    return threshold, zeros


def _copy_raw(fin, nbytes: int, dtype: str | None, writer: Writer, run: _Run) -> int:
    """Copy ``nbytes`` from ``fin`` to the writer in chunks; their zero count when ``dtype`` is given."""
    item = ITEMSIZE.get(dtype, 1) if dtype else 1
    chunk = max(item, run.options.copy_chunk - run.options.copy_chunk % item)
    zeros = 0
    for data, base in read_chunks(fin, nbytes, chunk, run.buffers):
        writer.write(data)
        run.buffers.put(base)
        if dtype:
            z = count_zeros(data, dtype)
            zeros = -1 if (z < 0 or zeros < 0) else zeros + z
    return zeros


def _mask_shard(src: Path, out: Path, run: _Run) -> list[dict]:
    """Write one safetensors file masked at the run's ratio to ``out``; its stats rows."""
    head, entries = read_header(src)
    rows: list[dict] = []
    with open(src, "rb") as fin, open(out, "wb") as fout:
        writer = Writer(fout, run.options.writeback)
        writer.write(head)
        pos = 0  # data bytes written so far (relative to the end of the header)
        for name, info in entries:
            (begin, end), dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
            if begin != pos:  # a gap in the data section (not written by safetensors): copy it
                fin.seek(len(head) + pos)
                _copy_raw(fin, begin - pos, None, writer, run)
            fin.seek(len(head) + begin)
            row = dict(name=name, numel=math.prod(shape), ratio=run.ratio, dtype=dtype, shard=src.name)
            masked = dtype in BITS and len(shape) >= 2 and name_matches(name, *run.names)
            k = num_masked(run.ratio, row["numel"]) if masked else 0
            if k:
                raw, base = read_pooled(fin, end - begin, run.buffers)
                threshold, zeros = _mask_raw(raw, dtype, writer, run)
                run.buffers.put(base)  # every chunk is masked: raw is no longer read
            else:  # not maskable, or k = 0: the tensor unchanged
                threshold, zeros = None, _copy_raw(fin, end - begin, dtype, writer, run)
            rows.append(dict(row, threshold=threshold, zeros=zeros, masked=masked, k=k))
            pos = end
    return rows


def _stats_frame(rows: list[dict]) -> pd.DataFrame:
    stats = pd.DataFrame(rows, columns=STATS_COLUMNS)
    stats["threshold"] = stats["threshold"].astype("float64")
    stats["sparsity"] = stats["zeros"] / stats["numel"].where(stats["numel"] > 0)
    return stats


def mask_checkpoint(teacher_dir: str | os.PathLike, out_root: str | os.PathLike, ratio: float,
                    include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                    progress: bool = True, options: MaskingOptions | None = None) -> pd.DataFrame:
    """Write ``out_root/masked_r<ratio>`` (Eq. 1-2, per-tensor thresholds) and return its stats.

    The output is a complete HF checkpoint: the teacher's safetensors files under the same
    names, with the same header (tensor order, dtypes, shapes, offsets, ``__metadata__``) and the
    same index json, maskable tensors masked and every other tensor byte-identical; every
    non-weight file of the teacher copied (other weight formats such as ``*.bin`` are not);
    ``masking_stats.csv``.  An existing directory of the same ratio is replaced.  ``options``:
    the tuning knobs (:class:`masters.masking.MaskingOptions`); the worker threads are shut down
    before this returns or raises.

    The stats have one row per tensor, columns :data:`STATS_COLUMNS`: ``threshold`` (NaN where
    k = 0 or not masked), ``zeros`` (zero entries in the written tensor), ``masked`` (selected
    for masking: maskable name, shape and dtype), ``k`` = floor(r*n), ``sparsity`` = zeros / numel.
    """
    opts = options or MaskingOptions()
    teacher, out_root = Path(teacher_dir), Path(out_root)
    [r] = validate_ratios([ratio])
    names = name_filter(include, exclude)
    files = weight_files(teacher)
    for f in files:  # validate every input before writing anything
        read_header(f)
    out_root.mkdir(parents=True, exist_ok=True)
    partial = out_root / f".{ratio_dirname(r)}.partial-{os.getpid()}"
    t0 = time.time()
    try:
        for stale in out_root.glob(f".{ratio_dirname(r)}.partial-*"):  # a killed run's (up to a teacher's size)
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir()
        rows: list[dict] = []
        with Workers(opts) as workers:
            run = _Run(r, names, opts, workers, Buffers())
            for i, src in enumerate(files, 1):
                shard_rows = _mask_shard(src, partial / src.name, run)
                check_size(src, partial / src.name)
                rows += shard_rows
                if progress:
                    print(f"[mask] {ratio_dirname(r)} {i}/{len(files)} {src.name}: "
                          f"{sum(row['masked'] for row in shard_rows)}/{len(shard_rows)} tensors masked "
                          f"({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        stats = _stats_frame(rows)
        copy_other_files(teacher, partial, {out_root.resolve(), partial.resolve()})
        stats.to_csv(partial / STATS_FILE, index=False)
        final = out_root / ratio_dirname(r)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if progress:
        sel = stats[stats["masked"]]
        frac = sel["zeros"].sum() / max(1, sel["numel"].sum())
        print(f"[mask] {ratio_dirname(r)}: {len(sel)} masked tensors, {frac:.2%} of their entries zero",
              file=sys.stderr)
    return stats


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
    stats = pd.concat([mask_checkpoint(args.teacher, args.out, r, include=args.include, exclude=args.exclude,
                                       progress=not args.quiet, options=options) for r in rs], ignore_index=True)
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
                    "r_k = r_max - k*step down to 0, with per-tensor magnitude thresholds, one "
                    "pass over the teacher per ratio.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory (safetensors, single file or sharded)")
    p.add_argument("--r-max", type=float, default=None, help="largest masking ratio, in [0, 1)")
    p.add_argument("--step", type=float, default=None,
                   help="ratio decrement s between stages; r_max must be a multiple of it (needed if --r-max > 0)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="explicit ratios instead of --r-max/--step (one pass over the teacher each)")
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
