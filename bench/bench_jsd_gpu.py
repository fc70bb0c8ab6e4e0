#!/usr/bin/env python
"""Benchmark on one GPU: chunked token JSD (masters.rewards.token_jsd) vs TRL's generalized JSD
vs Liger-Kernel's fused Triton JSD (``liger_kernel.transformers.LigerJSD``).

Liger's kernel runs on CUDA only, so this bench is the GPU half of ``bench/bench_jsd.py`` and is
run by the GPU check (``scripts/gpu_check.sh``), which carries both peers as wheels. The three take
different inputs, each given what it needs and charged for what it computes:

- ``token_jsd(teacher_logits, student_logits, vocab_size)``: raw logits of both widths, cut and
  ``log_softmax``-ed inside, ``--chunk-size`` positions at a time; per-position JSD ``[T]``;
- TRL ``GKDTrainer.generalized_jsd_loss(student, teacher, beta, reduction="none")`` on the cut
  logits ``[1, T, V]``, summed over the vocabulary: per-position JSD;
- Liger ``LigerJSD(beta)(log_q, log_p)``: log-probabilities ``[T, V]`` (the ``log_softmax`` of the
  cut logits, timed as part of it), mean over positions of the per-position JSD.

Two modes per variant: ``reward`` (no gradient: the distillation reward, METHOD.md §4) and
``loss`` (forward + backward w.r.t. the student logits: the JSD term of the training loss).
Memory is ``torch.cuda.max_memory_allocated`` above what the inputs hold; time the median of
``--repeats`` synchronized runs after one warm-up. Values: each variant's mean JSD and the
student-logit gradient of its mean, against ``token_jsd``'s, max absolute difference ≤ ``--tol``.

    python bench/bench_jsd_gpu.py --json jsd_gpu.json   # on a GPU (T = 2,048, V = 151,936)
    python bench/bench_jsd_gpu.py --device cpu --positions 64 --vocab 1000 --teacher-vocab 1024
        # the comparison logic on the CPU, Liger skipped (its kernel needs CUDA)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def variants(vocab: int, chunk_size: int, beta: float):
    """name -> fn(teacher_logits, student_logits) returning the per-position JSD [T] or its mean."""
    import torch

    from bench_jsd import trl_jsd
    from masters.rewards import token_jsd

    out = {
        "chunked": lambda t, s: token_jsd(t, s, vocab_size=vocab, chunk_size=chunk_size),
        "trl": lambda t, s: trl_jsd(t, s, vocab, beta=beta),
    }
    try:
        from liger_kernel.transformers import LigerJSD
    except ImportError:
        return out, "liger-kernel is not installed"
    liger = LigerJSD(beta=beta)
    # log_q (student) first, log_p (teacher) second: Liger's argument order (predictions, targets)
    out["liger"] = lambda t, s: liger(torch.log_softmax(s[:, :vocab].float(), -1),
                                      torch.log_softmax(t[:, :vocab].float(), -1))
    return out, None


def measure(fn, teacher, student, mode: str, repeats: int, device) -> dict:
    """Time and peak memory of ``fn`` in ``mode``; returns them with the mean value and gradient."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once():
        s = student.detach().requires_grad_(mode == "loss")
        with torch.set_grad_enabled(mode == "loss"):
            value = fn(teacher, s).mean()
            if mode == "loss":
                value.backward()
        return value.detach(), s.grad

    once()  # warm-up: kernels compiled, allocator primed
    sync()
    times = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        t0 = time.perf_counter()
        value, grad = once()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return {"time_s": statistics.median(times), "times_s": times, "peak_extra_bytes": peak,
            "value": value.double().item(), "grad": grad}


def main(argv: list[str] | None = None) -> int:
    from bench_jsd import logit_parser, parse_logit_args

    p = logit_parser(__doc__)
    p.add_argument("--beta", type=float, default=0.5, help="JSD mixture weight (METHOD.md: 0.5); default 0.5")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant and mode; default 5")
    p.add_argument("--device", default="cuda", help="torch device; default cuda (Liger needs it)")
    args = parse_logit_args(p, argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible (use --device cpu for the comparison logic)")
    fns, missing = variants(args.vocab, args.chunk_size, args.beta)
    if device.type != "cuda":
        fns.pop("liger", None)
        missing = missing or "Liger's Triton kernel needs CUDA"
    g = torch.Generator(device=device).manual_seed(args.seed)
    teacher = torch.randn(args.positions, args.teacher_vocab, generator=g, device=device) * args.scale
    student = torch.randn(args.positions, args.vocab, generator=g, device=device) * args.scale

    report = {"positions": args.positions, "vocab": args.vocab, "teacher_vocab": args.teacher_vocab,
              "chunk_size": args.chunk_size, "beta": args.beta, "repeats": args.repeats, "tol": args.tol,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
              "torch": torch.__version__, "skipped": missing, "modes": {}}
    ok = True
    mib = 1024 ** 2
    for mode in ("reward", "loss"):
        res = {name: measure(fn, teacher, student, mode, args.repeats, device) for name, fn in fns.items()}
        ref = res["chunked"]
        print(f"--- {mode}: T={args.positions} V={args.vocab} (teacher {args.teacher_vocab}) on {report['device']}")
        print(f"{'variant':<8} {'time (ms)':>10} {'peak extra (MiB)':>17} {'|Δ mean|':>10} {'|Δ grad|':>10}")
        rows = {}
        for name, r in res.items():
            d_value = abs(r["value"] - ref["value"])
            d_grad = (r["grad"].double() - ref["grad"].double()).abs().max().item() if mode == "loss" else 0.0
            ok &= d_value <= args.tol and d_grad <= args.tol
            peak = r["peak_extra_bytes"]
            rows[name] = {"time_s": r["time_s"], "times_s": r["times_s"], "peak_extra_bytes": peak,
                          "mean_jsd": r["value"], "abs_diff_mean": d_value, "max_abs_diff_grad": d_grad,
                          "time_vs_chunked": r["time_s"] / ref["time_s"],
                          "memory_vs_chunked": peak / max(ref["peak_extra_bytes"], 1) if peak is not None else None}
            print(f"{name:<8} {r['time_s'] * 1e3:>10.2f} {(peak or 0) / mib:>17.1f} {d_value:>10.2e} {d_grad:>10.2e}")
        report["modes"][mode] = rows
    if missing:
        print(f"liger skipped: {missing}")
    report["values_match"] = ok
    print(f"values within {args.tol:g} of token_jsd: {'OK' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
