"""Bench: batched pre-generation vs one question at a time (target: >= 5x faster).

    .venv/bin/python bench/bench_generation.py --model results/world/models/L \
        --questions results/world/data/count/train.parquet

Prints wall times, responses per second and the speed-up; same sampling as the workflow.
"""

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from masters.generation import HFBackend, SamplingParams, generate_responses


def run(backend, questions, params, batch_size) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_responses(backend, questions, params, Path(tmp) / "r.parquet", source="teacher",
                           model_name="bench", ratio=0.0, batch_size=batch_size, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--questions", required=True, help="question parquet (id, image, question)")
    parser.add_argument("--num-questions", type=int, default=64, help="questions to answer")
    parser.add_argument("--n", type=int, default=4, help="responses per question")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="response length limit")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per batch in the batched run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = pd.read_parquet(args.questions).iloc[: args.num_questions]
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    backend = HFBackend(args.model)
    run(backend, questions.iloc[:4], params, 4)  # warm-up
    single = run(backend, questions, params, 1)
    batched = run(backend, questions, params, args.batch_size)
    total = len(questions) * args.n
    print(f"{len(questions)} questions x {args.n} responses, <= {args.max_new_tokens} new tokens, {args.threads} threads")
    print(f"one question at a time: {single:7.2f} s  ({total / single:7.1f} responses/s)")
    print(f"batched ({args.batch_size} questions): {batched:7.2f} s  ({total / batched:7.1f} responses/s)")
    print(f"speed-up: {single / batched:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
