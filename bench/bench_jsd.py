#!/usr/bin/env python
"""Benchmark: chunked token JSD (masters.rewards.token_jsd) vs TRL's own generalized JSD.

TRL's function (``GKDTrainer.generalized_jsd_loss``, trl pinned in the ``bench`` extra, imported
from the installed package) takes full ``[B, T, V]`` logits: a ``log_softmax`` over the whole
vocabulary of both models, the mixture via ``logsumexp`` of the stacked, β-shifted log-probs
(β = 0.5), ``F.kl_div(..., log_target=True)`` for both terms; with ``reduction="none"``, summed
over the vocabulary, it gives one JSD per position, the quantity ``token_jsd`` returns.

Inputs: random float32 logits, teacher width ``--teacher-vocab`` (152,064) and student
width ``--vocab`` (151,936), both cut to ``--vocab`` before the softmax (the padding cut).

Each variant runs in a fresh subprocess: inputs are created, ``ru_maxrss`` is read as the
baseline, then the variant runs ``--repeats`` times; its peak extra memory is the
``ru_maxrss`` increase and its time the median wall time. The parent checks the max
absolute difference (≤ ``--tol``) and the targets: ≤ 0.2× TRL's peak memory at
≤ 1.0× its time. Exit status 1 when the values disagree.

    pip install -e '.[bench]'                  # TRL (bench only; the tests do not need it)
    python bench/bench_jsd.py                  # full size: T = 2,048, V = 151,936 (~10 GB RAM)
    python bench/bench_jsd.py --positions 256  # quick check
    python bench/bench_jsd.py --mode loss --positions 1024  # with the backward (values and gradients compared)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEM_TARGET = 0.2
TIME_TARGET = 1.0


def trl_jsd(teacher_logits, student_logits, vocab_size: int, beta: float = 0.5):
    """TRL's own generalized JSD (``GKDTrainer.generalized_jsd_loss``, imported, not rewritten),
    per position: its element-wise result (``reduction="none"``) summed over the vocabulary."""
    try:
        from trl.experimental.gkd import GKDTrainer  # trl >= 1.0
    except ImportError:
        try:
            from trl import GKDTrainer  # trl < 1.0
        except ImportError as err:
            raise SystemExit("bench_jsd compares with TRL: pip install -e '.[bench]' (trl, pinned)") from err
    cut = lambda logits: logits[None, :, :vocab_size].float()  # noqa: E731  [1, T, V]
    return GKDTrainer.generalized_jsd_loss(cut(student_logits), cut(teacher_logits), beta=beta,
                                           reduction="none").sum(-1)[0]


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def worker(args: argparse.Namespace) -> None:
    """Run one variant in this (fresh) process; print a JSON line, save the values."""
    import torch

    torch.set_num_threads(args.threads)
    from masters.rewards import token_jsd

    g = torch.Generator().manual_seed(args.seed)
    teacher = torch.randn(args.positions, args.teacher_vocab, generator=g)
    student = torch.randn(args.positions, args.vocab, generator=g)
    teacher.mul_(args.scale)
    student.mul_(args.scale)
    if args.variant == "chunked":
        def fn():
            return token_jsd(teacher, student, vocab_size=args.vocab, chunk_size=args.chunk_size)
    else:
        def fn():
            return trl_jsd(teacher, student, args.vocab)

    loss = args.mode == "loss"
    student.requires_grad_(loss)
    baseline = _maxrss_bytes()
    times = []
    with torch.set_grad_enabled(loss):
        for _ in range(args.repeats):
            student.grad = None
            t0 = time.perf_counter()
            out = fn()
            if loss:  # the gradient of the summed JSD w.r.t. the student logits
                out.sum().backward()
            times.append(time.perf_counter() - t0)
    peak = _maxrss_bytes()
    torch.save({"value": out.detach(), "grad": student.grad}, args.out)
    print(json.dumps({"variant": args.variant, "times_s": times, "time_s": statistics.median(times),
                      "baseline_bytes": baseline, "peak_extra_bytes": peak - baseline}))


def run_variant(variant: str, args: argparse.Namespace, out_path: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--out", str(out_path),
           "--positions", str(args.positions), "--vocab", str(args.vocab),
           "--teacher-vocab", str(args.teacher_vocab), "--chunk-size", str(args.chunk_size),
           "--seed", str(args.seed), "--scale", str(args.scale), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--mode", args.mode]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def logit_parser(doc: str) -> argparse.ArgumentParser:
    """The flags of the random logits both JSD benches compare on (this one, bench_jsd_gpu.py)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, default=2048, help="positions T (batch×sequence flattened); default 2048")
    p.add_argument("--vocab", type=int, default=151_936,
                   help="student logit width = tokenizer length both are cut to; default 151936")
    p.add_argument("--teacher-vocab", type=int, default=152_064,
                   help="teacher logit width (padded; exercises the cut); default 152064")
    p.add_argument("--chunk-size", type=int, default=256, help="positions per chunk of token_jsd; default 256")
    p.add_argument("--seed", type=int, default=0, help="seed of the random logits; default 0")
    p.add_argument("--scale", type=float, default=4.0, help="the logits are N(0, 1)·scale; default 4")
    p.add_argument("--tol", type=float, default=1e-5, help="max allowed |difference| to token_jsd; default 1e-5")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    return p


def parse_logit_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.teacher_vocab < args.vocab:
        p.error("--teacher-vocab must be >= --vocab")
    return args


def main(argv: list[str] | None = None) -> int:
    p = logit_parser(__doc__)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported); default 3")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each worker; default 1")
    p.add_argument("--mode", choices=["reward", "loss"], default="reward",
                   help="reward: values only, no gradient (the distillation reward); loss: forward + backward"
                        " w.r.t. the student logits (the JSD term of training); default reward")
    p.add_argument("--worker", choices=["chunked", "trl"], default=None,
                   help="internal: run one variant in this process")
    p.add_argument("--out", type=Path, default=None, help="internal: where a worker saves its values")
    args = parse_logit_args(p, argv)

    if args.worker:
        args.variant = args.worker
        worker(args)
        return 0

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        res = {v: run_variant(v, args, Path(tmp) / f"{v}.pt") for v in ("trl", "chunked")}
        a = torch.load(Path(tmp) / "chunked.pt", weights_only=True)
        b = torch.load(Path(tmp) / "trl.pt", weights_only=True)
    max_diff = max((a[k].double() - b[k].double()).abs().max().item() for k in ("value", "grad") if a[k] is not None)
    ref, ours = res["trl"], res["chunked"]
    mem_ratio = ours["peak_extra_bytes"] / max(ref["peak_extra_bytes"], 1)
    time_ratio = ours["time_s"] / ref["time_s"]
    report = {
        "positions": args.positions, "vocab": args.vocab, "teacher_vocab": args.teacher_vocab,
        "chunk_size": args.chunk_size, "threads": args.threads, "repeats": args.repeats, "mode": args.mode,
        "max_abs_diff": max_diff, "tol": args.tol, "values_match": max_diff <= args.tol,
        "trl": ref, "chunked": ours, "memory_ratio": mem_ratio, "time_ratio": time_ratio,
        "memory_target": MEM_TARGET, "time_target": TIME_TARGET,
        "meets_targets": mem_ratio <= MEM_TARGET and time_ratio <= TIME_TARGET,
    }
    mib = 1024 ** 2
    print(f"T={args.positions} V={args.vocab} (teacher {args.teacher_vocab}) chunk={args.chunk_size} "
          f"threads={args.threads} mode={args.mode}")
    print(f"{'variant':<10} {'time (s)':>10} {'peak extra (MiB)':>17}")
    for name, r in (("trl", ref), ("chunked", ours)):
        print(f"{name:<10} {r['time_s']:>10.3f} {r['peak_extra_bytes'] / mib:>17.1f}")
    print(f"max |diff| = {max_diff:.3e} (tol {args.tol:g}): {'OK' if report['values_match'] else 'FAIL'}")
    print(f"memory ratio {mem_ratio:.3f} (target <= {MEM_TARGET}), time ratio {time_ratio:.3f} "
          f"(target <= {TIME_TARGET}): {'met' if report['meets_targets'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["values_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
