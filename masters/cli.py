"""The ``masters`` command: one subcommand per workflow step, files in, files out.

Snakemake rules call these; each is usable by hand too (``masters <cmd> --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def cmd_data(args: argparse.Namespace) -> None:
    from masters.world import vqa

    rows = vqa.generate(args.task, args.split, args.n, args.seed, args.image_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    vqa.write_parquet(rows, args.out)
    print(f"wrote {len(rows)} {args.task}/{args.split} items to {args.out}")


def cmd_tokenizer(args: argparse.Namespace) -> None:
    import pandas as pd

    from masters.world import models, tokenizer

    frames = [pd.read_parquet(p, columns=["question", "answer", "options"]) for p in args.train]
    corpus = []
    for frame in frames:
        corpus += (frame["question"] + " " + frame["answer"]).tolist()
    tok = tokenizer.train_tokenizer(corpus, args.vocab_size)
    processor = models.build_processor(tok, args.architecture, args.image_size)
    processor.save_pretrained(args.out)
    print(f"tokenizer: {len(tok)} tokens; processor for {args.architecture} @ {args.image_size}px -> {args.out}")


def cmd_sft(args: argparse.Namespace) -> None:
    from transformers import AutoProcessor

    from masters.world import models, sft

    _threads(args.threads)
    processor = AutoProcessor.from_pretrained(args.processor)
    size = models.ModelSize(
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        intermediate_size=args.intermediate_size,
        vision_hidden_size=args.vision_hidden_size,
        vision_depth=args.vision_depth,
        vocab_multiple=args.vocab_multiple,
    )
    model = models.build_model(args.architecture, size, processor.tokenizer, seed=args.seed)
    print(f"{args.architecture} {size}: {models.num_parameters(model):,} parameters")
    items = sft.load_items(args.train)
    cfg = sft.SFTConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    Path(args.loss_log).parent.mkdir(parents=True, exist_ok=True)
    sft.train(model, processor, items, cfg, log_path=args.loss_log)
    models.save_checkpoint(model, processor, args.out)
    print(f"saved {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from masters.evaluation import Benchmark, evaluate

    _threads(args.threads)
    benchmarks = [Benchmark(**b) for b in json.loads(args.benchmarks)]
    summary = evaluate(
        args.model,
        benchmarks,
        batch_size=args.batch_size,
        limit=args.limit,
        trust_remote_code=args.trust_remote_code,
        samples_path=args.samples,
    )
    summary["label"] = args.label
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["accuracy"], indent=2))


def cmd_accuracy_table(args: argparse.Namespace) -> None:
    from masters.tables import accuracy_table, write_table

    table = accuracy_table(args.results)
    write_table(table, args.out, caption="Accuracy (%) of the tiny models (lm-eval, greedy, test split)")
    print(table.to_string())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masters", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="render one task/split of the procedural VQA data to parquet")
    p.add_argument("--task", required=True, help="task family (colour, shape, count, position, chart, digits)")
    p.add_argument("--split", required=True, choices=["train", "test"], help="which split")
    p.add_argument("--n", type=int, required=True, help="number of items")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--image-size", type=int, required=True, help="image side in pixels")
    p.add_argument("--out", required=True, help="output parquet path")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tokenizer", help="train the BPE tokenizer and save the processor")
    p.add_argument("--train", nargs="+", required=True, help="train parquet files (the corpus)")
    p.add_argument("--vocab-size", type=int, required=True, help="BPE target vocabulary size")
    p.add_argument("--architecture", required=True, help="qwen2_vl | qwen2_5_vl | qwen3_vl")
    p.add_argument("--image-size", type=int, required=True, help="image side the processor resizes to")
    p.add_argument("--out", required=True, help="output directory (tokenizer + processor)")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("sft", help="build a tiny VLM and fine-tune it on the train split")
    p.add_argument("--processor", required=True, help="directory written by `masters tokenizer`")
    p.add_argument("--train", nargs="+", required=True, help="train parquet files")
    p.add_argument("--architecture", required=True, help="qwen2_vl | qwen2_5_vl | qwen3_vl")
    p.add_argument("--hidden-size", type=int, required=True, help="text hidden size (multiple of 32)")
    p.add_argument("--num-layers", type=int, required=True, help="text decoder layers")
    p.add_argument("--intermediate-size", type=int, required=True, help="text MLP width")
    p.add_argument("--vision-hidden-size", type=int, required=True, help="vision tower width (multiple of 32)")
    p.add_argument("--vision-depth", type=int, required=True, help="vision tower blocks")
    p.add_argument("--vocab-multiple", type=int, required=True, help="round the embedding rows up to this")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--batch-size", type=int, required=True, help="items per step")
    p.add_argument("--lr", type=float, required=True, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--loss-log", required=True, help="CSV of step, loss, lr")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("evaluate", help="score one checkpoint on benchmarks with lm-eval")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--label", default=None, help="name of the model in tables")
    p.add_argument("--benchmarks", required=True, help='JSON list of {"name", "task", "data"?, "metric"?}')
    p.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items per benchmark")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own code")
    p.add_argument("--samples", default=None, help="optional JSONL of per-item responses")
    p.add_argument("--out", required=True, help="summary JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("accuracy-table", help="table of per-benchmark accuracy from evaluate JSONs")
    p.add_argument("--results", nargs="+", required=True, help="JSON files written by `masters evaluate`")
    p.add_argument("--out", required=True, help="output path stem: writes STEM.csv, STEM.md, STEM.tex")
    p.set_defaults(func=cmd_accuracy_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
