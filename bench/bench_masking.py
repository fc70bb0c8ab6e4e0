"""Masking one teacher at one ratio (``mask_checkpoint``, one workflow job) against copying it.

Writes a synthetic sharded checkpoint of about ``--gb`` GB (an embedding, LLaMA/Qwen-like
decoder layers: q/k/v/o, gate/up/down, two norms; N(0, 0.02) weights), then times, on the same
disk, fastest of ``--repeat``:

* copy: the checkpoint copied once (``shutil.copy`` per file; the same bytes written as masking
  writes), the floor for a job that must write a full checkpoint;
* mask: ``mask_checkpoint(teacher, out, ratio)`` in a fresh child process (its peak RSS is its
  own), for each ``--ratios`` value (default 0.2).

``cold``: the teacher is evicted from the page cache before each run (after a ``sync``);
``warm``: read once before.  Wall times run until the output is on disk (``sync`` included);
every output is deleted before the next run.  Prints wall and CPU seconds, peak RSS, throughput
(checkpoint GB / wall s) and wall vs copy.  ``--code DIR``
benchmarks another checkout of the package (e.g. ``git worktree add /tmp/old 60b21a4``; code
whose ``mask_checkpoint`` takes a list of ratios is called with ``[ratio]``).

    python bench/bench_masking.py --gb 0.75 --shards 2
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ITEMSIZE = {"BF16": 2, "F32": 4}


def layer_tensors(i: int, hidden: int, inter: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of one decoder layer (7 maskable linears, 2 norms)."""
    p = f"model.layers.{i}."
    return [(p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter))]


def plan(gb: float, hidden: int, inter: int, vocab: int, itemsize: int) -> list[tuple[str, tuple[int, ...]]]:
    """An embedding, as many layers as make ``gb`` GB, and the final norm."""
    layer = sum(itemsize * int(np.prod(s)) for _, s in layer_tensors(0, hidden, inter))
    n_layers = max(1, round((gb * 1e9 - itemsize * vocab * hidden) / layer))
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(n_layers):
        shapes += layer_tensors(i, hidden, inter)
    return shapes + [("model.norm.weight", (hidden,))]


def _random_bytes(shape, dtype: str, rng: np.random.Generator) -> bytes:
    """N(0, 0.02) weights (norms: ones) as raw little-endian BF16 (truncated float32) or F32."""
    n = int(np.prod(shape))
    w = np.ones(n, np.float32) if len(shape) == 1 else rng.standard_normal(n, np.float32) * np.float32(0.02)
    return (w.view(np.uint32) >> 16).astype(np.uint16).tobytes() if dtype == "BF16" else w.tobytes()


def write_checkpoint(out: Path, shapes, dtype: str, shards: int, seed: int = 0) -> None:
    """``shards`` safetensors files of about equal size, the index and a config.json."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    total = sum(ITEMSIZE[dtype] * int(np.prod(s)) for _, s in shapes)
    groups: list[list] = [[]]
    size = 0
    for name, shape in shapes:
        if size >= total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, shape))
        size += ITEMSIZE[dtype] * int(np.prod(shape))
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in group:
            nbytes = ITEMSIZE[dtype] * int(np.prod(shape))
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        with open(out / fname, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            for name, shape in group:
                f.write(_random_bytes(shape, dtype, rng))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps({"model_type": "synthetic"}))


def evict(teacher: Path) -> None:
    """Drop the teacher's pages from the page cache (after a sync: clean pages only)."""
    os.sync()
    for p in teacher.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_up(teacher: Path) -> None:
    """Read every teacher file once, so that it is in the page cache."""
    for p in teacher.iterdir():
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def child(args: argparse.Namespace) -> None:
    """In a fresh process: one ``mask_checkpoint`` call; print wall, CPU time and peak RSS as JSON."""
    sys.path.insert(0, args.code)
    try:
        from masters.masked_teacher import mask_checkpoint
    except ImportError:  # revisions before the split into masking / masked_teacher / safetensors_stream
        from masters.masking import mask_checkpoint
    kwargs = {}
    if args.threads is not None:
        from masters.masking import MaskingOptions

        kwargs["options"] = MaskingOptions(threads=args.threads)
    ratio = float(args.child_ratio)
    if "ratios" in inspect.signature(mask_checkpoint).parameters:  # the multi-ratio revisions
        ratio = [ratio]
    t0 = time.perf_counter()
    mask_checkpoint(args.child_teacher, args.child_out, ratio, progress=False, **kwargs)
    os.sync()  # until the output is on disk
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024}))


def run_mask(args, teacher: Path, out: Path, ratio: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--code", args.code, "--child-teacher", str(teacher),
           "--child-out", str(out), "--child-ratio", repr(ratio)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"mask_checkpoint failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_copy(teacher: Path, out: Path) -> dict:
    out.mkdir()
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for p in sorted(teacher.iterdir()):
        shutil.copy(p, out / p.name)
    os.sync()
    wall, ru = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "rss": None}


def timed(run, teacher: Path, out: Path, cold: bool) -> dict:
    """``run()`` after evicting (cold) or reading (warm) the teacher; its output deleted and synced after."""
    evict(teacher) if cold else warm_up(teacher)
    os.sync()
    result = run()
    shutil.rmtree(out)
    os.sync()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=0.75, help="checkpoint size in GB (1e9 bytes); default 0.75")
    ap.add_argument("--shards", type=int, default=2, help="number of safetensors shards; default 2")
    ap.add_argument("--dtype", choices=sorted(ITEMSIZE), default="BF16", help="dtype of every tensor; default BF16")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size of the synthetic layers; default 2048")
    ap.add_argument("--intermediate", type=int, default=5632, help="MLP width of the synthetic layers; default 5632")
    ap.add_argument("--vocab", type=int, default=32000, help="rows of the (copied, not masked) embedding")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2],
                    help="masking ratios, one call (one workflow job) each; default 0.2")
    ap.add_argument("--cache", choices=["cold", "warm"], nargs="+", default=["cold", "warm"],
                    help="page-cache states to time: cold (teacher evicted before every run), warm "
                         "(teacher read before every run); default both")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each (cache, variant) this many times and report the fastest; default 1")
    ap.add_argument("--threads", type=int, default=None,
                    help="MaskingOptions(threads=...) for every call; default: the module's own default")
    ap.add_argument("--code", default=str(REPO),
                    help="directory holding the masters package to benchmark; default this repository")
    ap.add_argument("--dir", default=None, help="work directory on the disk to test; default a temp dir in $TMPDIR")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (and its checkpoint)")
    ap.add_argument("--child-teacher", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-ratio", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.code = str(Path(args.code).resolve())
    if args.child_teacher:
        child(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_masking_", dir=args.dir))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(print, f"kept {work}") if args.keep else cleanup.callback(shutil.rmtree, work, True)
        print_table(*measure(args, work))
    return 0


def measure(args: argparse.Namespace, work: Path) -> tuple[int, list[tuple[str, str, dict]]]:
    """Write the checkpoint under ``work``, then time every (cache, variant): its size, [(cache, variant, figures)]."""
    teacher, out = work / "teacher", work / "out"
    shapes = plan(args.gb, args.hidden, args.intermediate, args.vocab, ITEMSIZE[args.dtype])
    t0 = time.perf_counter()
    write_checkpoint(teacher, shapes, args.dtype, args.shards)
    size = sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    print(f"checkpoint: {size / 1e9:.2f} GB {args.dtype} in {args.shards} shards, {len(shapes)} tensors "
          f"(written in {time.perf_counter() - t0:.0f} s); code: {args.code}; "
          f"cores: {len(os.sched_getaffinity(0))}")
    variants = {"copy": lambda: run_copy(teacher, out)}
    for r in args.ratios:
        variants[f"mask {r:g}"] = lambda r=r: run_mask(args, teacher, out, r)
    rows = []
    for cache in args.cache:
        for name, run in variants.items():
            runs = [timed(run, teacher, out, cache == "cold") for _ in range(max(1, args.repeat))]
            rows.append((cache, name, min(runs, key=lambda r: r["wall_s"])))
    return size, rows


def print_table(size: int, rows: list[tuple[str, str, dict]]) -> None:
    print(f"{'cache':6} {'variant':10} {'wall s':>8} {'cpu s':>8} {'peak RSS GiB':>13} {'GB/s':>6} {'vs copy':>8}")
    for cache, name, r in rows:
        base = next(b for c, n, b in rows if c == cache and n == "copy")
        rss = "" if r["rss"] is None else f"{r['rss'] / 2**30:.2f}"
        print(f"{cache:6} {name:10} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {rss:>13} "
              f"{size / 1e9 / r['wall_s']:6.2f} {r['wall_s'] / base['wall_s']:7.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
