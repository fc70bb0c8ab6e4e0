"""One pass over a teacher for all its ratios vs one ``mask_checkpoint`` call per ratio.

The workflow can mask a teacher in one job per ratio (``rules/mask.smk``) or in one job per
teacher that reads the checkpoint once and writes every ratio.  This script times both on a
synthetic sharded safetensors checkpoint whose tensors carry maskable names
(``model.layers.{i}.mlp.down_proj.weight`` ...), plus an embedding and norms that are copied:

* ``one pass``: one ``mask_checkpoint(teacher, out, ratios)`` call;
* ``per ratio``: ``mask_checkpoint(teacher, out, [r])`` for every ratio, one after the other
  (what one job per ratio costs in total; its peak RSS is that of the largest call).

Every call runs in a fresh child process (its own ``ru_maxrss``).  Page cache, per ``--cache``:
``cold`` drops the teacher's pages before *every* call (``posix_fadvise(DONTNEED)`` after a
``sync``: only this checkpoint's pages, nothing else on the machine is evicted), as at paper
scale where a 15-64 GB teacher does not stay cached between jobs; ``warm`` reads the teacher
once before timing, so every call finds it in memory.  Outputs are deleted and synced (untimed)
between variants.  ``--code DIR`` benchmarks the ``masters`` package found in DIR (e.g. an
older revision exported with ``git archive``), default this repository.

    python bench/masking_one_pass.py --gb 1.5 --shards 3
"""

from __future__ import annotations

import argparse
import contextlib
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
    t0 = time.perf_counter()
    mask_checkpoint(args.child_teacher, args.child_out, json.loads(args.child_ratios), progress=False, **kwargs)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024}))


def run_call(args, teacher: Path, out: Path, ratios: list[float]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--code", args.code, "--child-teacher", str(teacher),
           "--child-out", str(out), "--child-ratios", json.dumps(ratios)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"mask_checkpoint failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def variant(args, teacher: Path, out: Path, calls: list[list[float]], cold: bool) -> dict:
    """Run ``calls`` one after the other; total wall and CPU seconds, largest peak RSS."""
    if not cold:
        warm_up(teacher)
    results = []
    for ratios in calls:
        if cold:
            evict(teacher)
        results.append(run_call(args, teacher, out, ratios))
    shutil.rmtree(out)
    os.sync()
    return {"wall_s": sum(r["wall_s"] for r in results), "cpu_s": sum(r["cpu_s"] for r in results),
            "rss": max(r["rss"] for r in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.5, help="checkpoint size in GB (1e9 bytes); default 1.5")
    ap.add_argument("--shards", type=int, default=3, help="number of safetensors shards; default 3")
    ap.add_argument("--dtype", choices=sorted(ITEMSIZE), default="BF16", help="dtype of every tensor; default BF16")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size of the synthetic layers; default 2048")
    ap.add_argument("--intermediate", type=int, default=5632, help="MLP width of the synthetic layers; default 5632")
    ap.add_argument("--vocab", type=int, default=32000, help="rows of the (copied, not masked) embedding")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2],
                    help="masking ratios; default 0.05 0.1 0.15 0.2")
    ap.add_argument("--cache", choices=["cold", "warm"], nargs="+", default=["cold", "warm"],
                    help="page-cache states to time: cold (teacher evicted before every call), warm "
                         "(teacher read once before timing); default both")
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
    ap.add_argument("--child-ratios", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.code = str(Path(args.code).resolve())
    if args.child_teacher:
        child(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="masking_one_pass_", dir=args.dir))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(print, f"kept {work}") if args.keep else cleanup.callback(shutil.rmtree, work, True)
        print_table(args, measure(args, work))
    return 0


def measure(args: argparse.Namespace, work: Path) -> list[tuple[str, str, int, dict]]:
    """Write the checkpoint under ``work``, then time every (cache, variant): (cache, variant, calls, figures)."""
    teacher, out = work / "teacher", work / "out"
    shapes = plan(args.gb, args.hidden, args.intermediate, args.vocab, ITEMSIZE[args.dtype])
    t0 = time.perf_counter()
    write_checkpoint(teacher, shapes, args.dtype, args.shards)
    size = sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    print(f"checkpoint: {size / 1e9:.2f} GB {args.dtype} in {args.shards} shards, {len(shapes)} tensors "
          f"(written in {time.perf_counter() - t0:.0f} s); code: {args.code}; ratios: {args.ratios}; "
          f"cores: {len(os.sched_getaffinity(0))}")
    variants = {"one pass": [list(args.ratios)], "per ratio": [[r] for r in args.ratios]}
    rows = []
    for cache in args.cache:
        for name, calls in variants.items():
            runs = [variant(args, teacher, out, calls, cache == "cold") for _ in range(max(1, args.repeat))]
            rows.append((cache, name, len(calls), min(runs, key=lambda r: r["wall_s"])))
    return rows


def print_table(args: argparse.Namespace, rows: list[tuple[str, str, int, dict]]) -> None:
    print(f"{'cache':6} {'variant':10} {'calls':>5} {'wall s':>8} {'cpu s':>8} {'peak RSS GiB':>13} "
          f"{'wall vs per ratio':>18}")
    for cache, name, calls, r in rows:
        base = next(b for c, n, _, b in rows if c == cache and n == "per ratio")
        print(f"{cache:6} {name:10} {calls:5d} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} "
              f"{r['rss'] / 2**30:13.2f} {r['wall_s'] / base['wall_s']:17.0%}")


if __name__ == "__main__":
    raise SystemExit(main())
