"""Benchmark ``masters.masking.mask_checkpoint`` against copying the checkpoint once per ratio.

Writes a synthetic sharded bf16 checkpoint of about ``--gb`` GB with realistic shapes (a
LLaMA/Qwen-7B-like decoder: embedding, per layer q/k/v/o (hidden x hidden), gate/up
(intermediate x hidden), down (hidden x intermediate), q/k/v biases and two norms, then the
final norm and lm_head), then on the same disk:

* copy kept: the checkpoint copied once per ratio (``shutil.copy`` per file), all copies kept
  until the end - "copying that checkpoint 5 times on the same disk", the target's baseline:
  the same output volume as masking, so the same page-cache / disk-writeback load;
* copy deleted (for information): the same copies, each deleted (untimed) before the next - a
  deleted copy never reaches the disk and its page-cache pages are reused by the next one, so
  this measures memory bandwidth rather than writing five checkpoints;
* mask: ``mask_checkpoint`` at the ratios ``r_max, r_max - step, ..., 0`` (default 5 ratios),
  run in a fresh child process so that its peak RSS (``ru_maxrss``) is its own.

Every timed phase starts after an untimed ``sync`` (no writeback left from the phase before).
It prints the wall times, mask / copy kept (target <= 1.3x), mask / copy deleted, and the peak RSS of
masking (target <= 2 x largest tensor + 1 GiB).  Disk use peaks at about (1 + number of ratios)
x ``--gb``.
If ``--gb`` is too small for the embedding, lm_head and two layers at the given widths, all
widths are halved until they fit (printed).

    python bench/bench_masking.py --gb 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _layer_shapes(i: int, hidden: int, inter: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (hidden,)),
        (p + "self_attn.q_proj.weight", (hidden, hidden)),
        (p + "self_attn.q_proj.bias", (hidden,)),
        (p + "self_attn.k_proj.weight", (hidden, hidden)),
        (p + "self_attn.k_proj.bias", (hidden,)),
        (p + "self_attn.v_proj.weight", (hidden, hidden)),
        (p + "self_attn.v_proj.bias", (hidden,)),
        (p + "self_attn.o_proj.weight", (hidden, hidden)),
        (p + "post_attention_layernorm.weight", (hidden,)),
        (p + "mlp.gate_proj.weight", (inter, hidden)),
        (p + "mlp.up_proj.weight", (inter, hidden)),
        (p + "mlp.down_proj.weight", (hidden, inter)),
    ]


def _nbytes(shapes) -> int:
    total = 0
    for _, s in shapes:
        n = 1
        for d in s:
            n *= d
        total += 2 * n  # bf16
    return total


def plan(gb: float, hidden: int, inter: int, vocab: int) -> tuple[list[tuple[str, tuple[int, ...]]], dict]:
    """Tensor names and shapes of a checkpoint of at least gb GB (widths halved until 2 layers fit)."""
    budget = int(gb * 1e9)
    while True:
        fixed = [("model.embed_tokens.weight", (vocab, hidden)), ("model.norm.weight", (hidden,)),
                 ("lm_head.weight", (vocab, hidden))]
        layer = _nbytes(_layer_shapes(0, hidden, inter))
        if _nbytes(fixed) + 2 * layer <= budget or hidden <= 64:
            break
        hidden, inter, vocab = hidden // 2, inter // 2, vocab // 2
    n_layers = max(2, -(-(budget - _nbytes(fixed)) // layer))  # ceil: at least gb GB
    shapes = [fixed[0]]
    for i in range(n_layers):
        shapes += _layer_shapes(i, hidden, inter)
    shapes += fixed[1:]
    return shapes, dict(hidden=hidden, intermediate=inter, vocab=vocab, layers=int(n_layers))


def write_checkpoint(out: Path, shapes, shard_bytes: int, seed: int = 0) -> None:
    """Sharded bf16 safetensors + index + a config.json, one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    groups, cur, size = [], [], 0
    for name, shape in shapes:
        nb = _nbytes([(name, shape)])
        if cur and size + nb > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nb
    groups.append(cur)
    weight_map, total = {}, 0
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape) * 0.02).to(torch.bfloat16)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * 2
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps({"model_type": "synthetic", "torch_dtype": "bfloat16"}))


def _peak_rss_bytes() -> tuple[int, int]:
    """(ru_maxrss, VmHWM) of this process in bytes (VmHWM: -1 where /proc is missing)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    hwm = -1
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return maxrss, hwm


def _child(args: argparse.Namespace) -> None:
    """Child process: write the checkpoint, or run mask_checkpoint and print a JSON line."""
    sys.path.insert(0, str(REPO))
    if args.child_generate:
        spec = json.loads(Path(args.child_generate).read_text())
        write_checkpoint(Path(spec["out"]), [(n, tuple(s)) for n, s in spec["shapes"]], spec["shard_bytes"])
        return
    from masters.masking import mask_checkpoint

    base = _peak_rss_bytes()
    t0 = time.perf_counter()
    mask_checkpoint(args.child_teacher, args.child_out, json.loads(args.child_ratios), progress=False)
    wall = time.perf_counter() - t0
    maxrss, hwm = _peak_rss_bytes()
    print(json.dumps({"wall_s": wall, "ru_maxrss": maxrss, "vm_hwm": hwm, "ru_maxrss_after_imports": base[0]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB (1e9 bytes); default 2")
    ap.add_argument("--hidden", type=int, default=4096, help="hidden size of the synthetic layers")
    ap.add_argument("--intermediate", type=int, default=11008, help="MLP width of the synthetic layers")
    ap.add_argument("--vocab", type=int, default=32000, help="embedding / lm_head rows")
    ap.add_argument("--shard-gb", type=float, default=None,
                    help="shard size in GB (default: --gb / 4, so the checkpoint has about 4 shards)")
    ap.add_argument("--r-max", type=float, default=0.2, help="largest masking ratio")
    ap.add_argument("--step", type=float, default=0.05, help="ratio step (0.2/0.05 -> 5 ratios)")
    ap.add_argument("--dir", default=None, help="work directory on the disk to test (default: a temp dir in $TMPDIR)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time copy and mask this many times each (alternating) and report the fastest of each")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--child-generate", help=argparse.SUPPRESS)
    ap.add_argument("--child-teacher", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-ratios", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_teacher or args.child_generate:
        _child(args)
        return 0

    sys.path.insert(0, str(REPO))
    from masters.schedule import ratios as schedule_ratios

    ratios = schedule_ratios(args.r_max, args.step)
    shapes, dims = plan(args.gb, args.hidden, args.intermediate, args.vocab)
    work = Path(tempfile.mkdtemp(prefix="bench_masking_", dir=args.dir))
    try:
        teacher = work / "teacher"
        t0 = time.perf_counter()
        shard = int((args.shard_gb if args.shard_gb else args.gb / 4) * 1e9)
        # written by a child process, so that this process stays small: a child's ru_maxrss
        # starts from its parent's RSS at fork time on Linux
        spec = work / "spec.json"
        spec.write_text(json.dumps({"out": str(teacher), "shapes": shapes, "shard_bytes": shard}))
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-generate", str(spec)], check=True)
        files = sorted(p for p in teacher.iterdir() if p.is_file())
        spec.unlink()
        size = sum(p.stat().st_size for p in files)
        largest = max(_nbytes([s]) for s in shapes)
        print(f"synthetic checkpoint: {size / 1e9:.3f} GB in {len(list(teacher.glob('*.safetensors')))} shards, "
              f"{dims}, largest tensor {largest / 2**20:.1f} MiB (written in {time.perf_counter() - t0:.1f}s)")
        print(f"ratios: {ratios}")

        copies, kept, masks, children = [], [], [], []
        for _ in range(max(1, args.repeat)):
            os.sync()
            copy_s = 0.0
            for i in range(len(ratios)):  # timed copies; each removed (untimed) before the next
                dst = work / f"copy{i}"
                dst.mkdir()
                t = time.perf_counter()
                for p in files:
                    shutil.copy(p, dst / p.name)
                copy_s += time.perf_counter() - t
                shutil.rmtree(dst)
            copies.append(copy_s)

            os.sync()
            t = time.perf_counter()
            for i in range(len(ratios)):  # timed copies, all kept until the end
                dst = work / f"kept{i}"
                dst.mkdir()
                for p in files:
                    shutil.copy(p, dst / p.name)
            kept.append(time.perf_counter() - t)
            for i in range(len(ratios)):
                shutil.rmtree(work / f"kept{i}")

            os.sync()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-teacher", str(teacher),
                   "--child-out", str(work / "masked"), "--child-ratios", json.dumps(ratios)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            children.append(json.loads(res.stdout.strip().splitlines()[-1]))
            masks.append(children[-1]["wall_s"])
            shutil.rmtree(work / "masked")
        if len(copies) > 1:
            print(f"copy runs: {[round(c, 3) for c in copies]} s; copy-kept runs: {[round(c, 3) for c in kept]} s; "
                  f"mask runs: {[round(m, 3) for m in masks]} s")
        copy_s = min(copies)
        kept_s = min(kept)
        child = max(children, key=lambda c: c["ru_maxrss"])
        child["wall_s"] = min(masks)
        mask_s = child["wall_s"]
        peak = child["ru_maxrss"]
        target_rss = 2 * largest + 2**30
        print(f"copy x{len(ratios)} kept (shutil.copy per file, same volume as mask): {kept_s:8.2f} s")
        print(f"copy x{len(ratios)} each deleted before the next (page cache reused): {copy_s:8.2f} s")
        print(f"mask_checkpoint at {len(ratios)} ratios: {mask_s:8.2f} s")
        print(f"mask / copy kept: {mask_s / kept_s:.2f}x (target <= 1.3x) -> "
              f"{'OK' if mask_s <= 1.3 * kept_s else 'MISSED'}; mask / copy deleted: {mask_s / copy_s:.2f}x")
        print(f"peak RSS of masking (ru_maxrss): {peak / 2**30:.3f} GiB (VmHWM {child['vm_hwm'] / 2**30:.3f} GiB, "
              f"after imports {child['ru_maxrss_after_imports'] / 2**30:.3f} GiB); "
              f"target <= 2 x largest tensor + 1 GiB = {target_rss / 2**30:.3f} GiB -> "
              f"{'OK' if peak <= target_rss else 'MISSED'}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
