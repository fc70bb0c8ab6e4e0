#!/usr/bin/env python
"""Benchmark: online RL (TRL's GRPOTrainer) vs Masters' offline chain, same student and questions.

The paper's efficiency claim (Sec. 4, "2 days vs over 30 days"): offline RL from responses
generated once is far cheaper than online RL, which generates at every step. Both sides here run
on this machine with the embedded default's world (``config.yaml``, or ``--configfile`` over it):

- **Masters** (offline): the workflow itself, ``snakemake <results>/students/<S>/<experiment>/s<seed>``
  from the built world on: masked teachers, pre-generation by the masked teachers and the
  student, the rule judge, distillation rewards, stage-by-stage training. Timed as a whole (wall
  time of the Snakemake run, ``--cores`` as given), peak memory = the largest process's RSS.
- **Online** (TRL ``GRPOTrainer``, trl pinned in the ``bench`` extra): the same student checkpoint,
  the same training questions (``<results>/train/questions.parquet``, images included), the same
  rule reward (``masters.judge.rule_score``), ``--num-generations`` responses per question per
  step, the student's sampling and response length of ``generation``, the learning rate and KL
  weight of ``training``. It runs in a fresh process for as long as the Masters chain took (the
  process's start, imports and model loading counted, as the chain's jobs count theirs).

Reported: wall time and peak memory per trained response (a response that entered an optimizer
step: Masters ``steps x batch_size``; TRL ``global_step x per_device_train_batch_size``) and
the student's accuracy on the workflow's benchmarks (``masters.evaluation.evaluate``, greedy)
after that equal wall time, with the untrained student's for reference. Goal: Masters at least
10x cheaper per trained response. The world build (SFT of the tiny models) is not timed.

    pip install -e '.[bench]'
    python bench/bench_online_offline.py --json bench_online_offline.json   # the default world
    python bench/bench_online_offline.py --configfile configs/smoke.yaml --results results/bench_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the worker's wall budget counts from its process start
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COST_TARGET = 10.0


def _maxrss_bytes(who=resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


# ------------------------------------------------------------------ the online side (TRL)


def grpo_dataset(questions_path: Path):
    """The training questions as TRL's conversational VLM rows (``prompt``, ``image``) plus the
    columns the reward reads (``answer``, ``options``)."""
    import pandas as pd
    from datasets import Dataset

    from masters.prompts import decode_image

    q = pd.read_parquet(questions_path)
    rows = [{"prompt": [{"role": "user", "content": r.question}], "image": decode_image(r.image),
             "answer": str(r.answer), "options": [str(o) for o in (r.options if r.options is not None else [])]}
            for r in q.itertuples()]
    return Dataset.from_list(rows)


def rule_reward(completions, answer, options, **_) -> list[float]:
    """R_acc of the workflow's rule judge for each completion (TRL's reward-function signature)."""
    from masters.judge import rule_score

    text = lambda c: c[-1]["content"] if isinstance(c, list) else c  # noqa: E731  conversational or not
    return [float(rule_score(text(c), a, o or None)) for c, a, o in zip(completions, answer, options)]


def run_online(args: argparse.Namespace) -> None:
    """One GRPO run of ``args.model`` for ``args.budget_s`` seconds of wall time; prints a JSON line."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    sampling = json.loads(args.sampling)
    budget = args.budget_s

    class StopAtBudget(TrainerCallback):
        def on_step_end(self, _args, state, control, **_kw):
            if time.perf_counter() - T0 >= budget:
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=str(args.out.with_name(args.out.name + ".trl")), per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations, max_completion_length=sampling["max_new_tokens"],
        temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=sampling["top_k"],
        repetition_penalty=sampling["repetition_penalty"], learning_rate=args.lr, beta=args.beta,
        max_steps=10**7, save_strategy="no", logging_steps=10, report_to="none", use_cpu=True, seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32),
                          reward_funcs=rule_reward, args=config, train_dataset=grpo_dataset(args.questions),
                          processing_class=AutoProcessor.from_pretrained(args.model), callbacks=[StopAtBudget()])
    trainer.train()
    wall = time.perf_counter() - T0
    steps = trainer.state.global_step
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    trainer.save_model(str(args.out))
    print(json.dumps({"wall_s": wall, "peak_rss_bytes": _maxrss_bytes(), "steps": steps,
                      "trained_responses": steps * args.batch_size, "mean_reward_first": rewards[0] if rewards else None,
                      "mean_reward_last": rewards[-1] if rewards else None}))


# ------------------------------------------------------------------ the offline side (Masters)


CHAIN_RULES = ["mask", "generate", "judge", "score", "reward", "train"]  # what the Masters side runs and times


def snakemake(targets: list[str], configfiles: list[Path], cores: int, log: Path,
              forcerun: list[str] | None = None) -> tuple[float, int]:
    """Run the workflow up to ``targets`` (targets first: --configfile takes every word after it),
    the jobs of the ``forcerun`` rules run again even if done; returns (wall seconds, the largest
    process's peak RSS in bytes)."""
    force = ["--forcerun", *forcerun] if forcerun else []
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), *targets, *force,
           "--configfile", *map(str, configfiles)]
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        # wait4's ru_maxrss: the largest of this run's processes (each waited for by its parent)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snakemake {' '.join(targets)} failed: see {log}")
    return wall, usage.ru_maxrss * 1024


def accuracy(model_dir: str, benchmarks: dict, threads: int) -> dict[str, float]:
    """Greedy accuracy on each benchmark, through the workflow's own evaluation, plus their mean."""
    import torch

    from masters.evaluation import Benchmark, evaluate

    torch.set_num_threads(threads)
    summary = evaluate(model_dir, [Benchmark(**b) for b in benchmarks.values()], batch_size=32,
                       device="cpu", dtype=torch.float32)
    acc = {name: float(summary["accuracy"][name]) for name in benchmarks}
    acc["Avg"] = sum(acc.values()) / len(benchmarks)
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results/bench_online_offline"),
                   help="the results folder of this bench's workflow run; default results/bench_online_offline")
    p.add_argument("--configfile", type=Path, nargs="*", default=[],
                   help="configs merged over config.yaml (e.g. configs/smoke.yaml); default none")
    p.add_argument("--student", default="S", help="student (config students); default S")
    p.add_argument("--experiment", default="masters", help="the Masters experiment to time; default masters")
    p.add_argument("--seed", type=int, default=0, help="training seed of both sides; default 0")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="Snakemake --cores and TRL's torch threads; default all")
    p.add_argument("--num-generations", type=int, default=8, help="TRL: responses per question per step; default 8")
    p.add_argument("--batch-size", type=int, default=16,
                   help="TRL: responses per optimizer step (a multiple of --num-generations); default 16")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    p.add_argument("--worker", action="store_true", help="internal: run the online side in this process")
    p.add_argument("--model", help="internal (worker): the student checkpoint")
    p.add_argument("--questions", type=Path, help="internal (worker): the training questions parquet")
    p.add_argument("--budget-s", type=float, help="internal (worker): wall-time budget in seconds")
    p.add_argument("--sampling", help="internal (worker): the generation settings, JSON")
    p.add_argument("--lr", type=float, help="internal (worker): learning rate")
    p.add_argument("--beta", type=float, help="internal (worker): KL weight")
    p.add_argument("--threads", type=int, default=1, help="internal (worker): torch threads")
    p.add_argument("--out", type=Path, help="internal (worker): where the trained student is saved")
    args = p.parse_args(argv)
    if args.worker:
        run_online(args)
        return 0
    if args.batch_size % args.num_generations:
        p.error("--batch-size must be a multiple of --num-generations")

    import pandas as pd

    from masters import specs
    from masters.config import load
    from masters.experiments import Design

    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    override = results / "bench.yaml"
    override.write_text(f"results: {results}\n")
    configfiles = [*args.configfile, override]
    design = Design(load([ROOT / "config.yaml", *configfiles], ROOT))
    log = results / "bench.log"
    questions = results / "train" / "questions.parquet"
    student_dir = design.config["models"][args.student].format(results=results)

    print("world (not timed) ...", flush=True)
    snakemake(["--until", "world_sft"], configfiles, args.cores, log)
    benchmarks = specs.benchmark_entries(design, ROOT)
    snakemake([str(questions), *(b["data"] for b in benchmarks.values() if "data" in b)], configfiles, args.cores, log)
    train_dir = Path(design.train_dir(args.student, args.experiment, args.seed))

    print(f"Masters chain: {train_dir} ...", flush=True)  # every job of it runs, done before or not
    wall_m, rss_m = snakemake([str(train_dir)], configfiles, args.cores, log, forcerun=CHAIN_RULES)
    log_m = pd.read_csv(train_dir / "train_log.csv")
    steps_m = int(log_m["step"].max())
    trained_m = steps_m * int(design.config["training"]["batch_size"])
    jobs = []
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        kind = tsv.relative_to(results / "benchmarks").parts[0]
        if kind not in ("world",) and tsv.stat().st_mtime >= time.time() - wall_m - 5:
            jobs.append({"kind": kind, "s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])})
    per_kind = pd.DataFrame(jobs).groupby("kind")["s"].agg(["count", "sum"]).round(1) if jobs else pd.DataFrame()
    generated = sum(len(pd.read_parquet(f)) for f in (results / "responses").rglob("*.parquet"))

    print(f"TRL GRPO for {wall_m:.0f} s ...", flush=True)
    online_dir = results / "online" / args.student / f"s{args.seed}"
    gen = design.config["generation"]
    sampling = {"max_new_tokens": gen["max_new_tokens"], **{k: gen.get(k, d) for k, d in (
        ("temperature", 1.0), ("top_p", 0.9), ("top_k", 50), ("repetition_penalty", 1.05))}}
    training = design.config["training"]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", student_dir, "--questions", str(questions),
           "--budget-s", str(wall_m), "--sampling", json.dumps(sampling), "--lr", str(training["lr"]),
           "--beta", str(training.get("beta", 0.1)), "--threads", str(args.cores), "--seed", str(args.seed),
           "--num-generations", str(args.num_generations), "--batch-size", str(args.batch_size), "--out", str(online_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    (results / "online.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"TRL worker failed: see {results / 'online.log'}\n{proc.stderr[-3000:]}")
    online = json.loads(proc.stdout.strip().splitlines()[-1])

    print("accuracy (greedy, the workflow's benchmarks) ...", flush=True)
    acc = {"base": accuracy(student_dir, benchmarks, args.cores),
           "masters": accuracy(specs.eval_checkpoint(design, f"{args.student}/{args.experiment}/s{args.seed}/final"),
                               benchmarks, args.cores),
           "online": accuracy(str(online_dir), benchmarks, args.cores)}

    per_m = {"s": wall_m / trained_m, "bytes": rss_m / trained_m}
    # the training job alone: the marginal cost of one more run on responses generated already
    # (the default's Table 1 trains 6 runs, mask_progressive and masters x 3 seeds, on the same ones)
    train_s = float(per_kind.loc["students", "sum"]) if "students" in per_kind.index else float("nan")
    per_o = {"s": online["wall_s"] / max(online["trained_responses"], 1),
             "bytes": online["peak_rss_bytes"] / max(online["trained_responses"], 1)}
    report = {
        "config": [str(c) for c in args.configfile], "student": args.student, "experiment": args.experiment,
        "seed": args.seed, "cores": args.cores,
        "masters": {"wall_s": wall_m, "peak_rss_bytes": rss_m, "steps": steps_m, "trained_responses": trained_m,
                    "generated_responses": generated, "jobs": per_kind.reset_index().to_dict("records"),
                    "s_per_trained_response": per_m["s"], "bytes_per_trained_response": per_m["bytes"],
                    "training_job_s": train_s, "training_only_s_per_trained_response": train_s / trained_m},
        "online": {**online, "num_generations": args.num_generations, "batch_size": args.batch_size,
                   "s_per_trained_response": per_o["s"], "bytes_per_trained_response": per_o["bytes"]},
        "time_cost_ratio": per_o["s"] / per_m["s"], "memory_cost_ratio": per_o["bytes"] / per_m["bytes"],
        "cost_target": COST_TARGET, "accuracy": acc,
    }
    report["meets_target"] = report["time_cost_ratio"] >= COST_TARGET
    mib = 1024 ** 2
    print(f"\nMasters chain ({args.experiment}): {wall_m:.1f} s wall, peak RSS {rss_m / mib:.0f} MiB, "
          f"{trained_m} trained responses ({steps_m} steps), {generated} responses generated")
    if not per_kind.empty:
        print(per_kind.to_string())
    print(f"TRL GRPO (online): {online['wall_s']:.1f} s wall, peak RSS {online['peak_rss_bytes'] / mib:.0f} MiB, "
          f"{online['trained_responses']} trained responses ({online['steps']} steps), "
          f"mean reward {online['mean_reward_first']} -> {online['mean_reward_last']}")
    print(f"per trained response: Masters {per_m['s'] * 1e3:.1f} ms ({train_s / trained_m * 1e3:.1f} ms of it the"
          f" training job), {per_m['bytes'] / 1024:.0f} KiB of peak RSS; online {per_o['s'] * 1e3:.1f} ms,"
          f" {per_o['bytes'] / 1024:.0f} KiB of peak RSS")
    print(f"online / Masters per trained response: time {report['time_cost_ratio']:.1f}x, memory "
          f"{report['memory_cost_ratio']:.1f}x (target: Masters >= {COST_TARGET:g}x cheaper in time): "
          f"{'met' if report['meets_target'] else 'NOT met'}")
    print(f"accuracy (%) after the same {wall_m:.0f} s of wall time:\n" + pd.DataFrame(acc).T.round(1).to_string())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
