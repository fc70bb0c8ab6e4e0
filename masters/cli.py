"""The ``masters`` command: one subcommand per workflow step, files in, files out.

Snakemake rules call these; each is usable by hand too (``masters <cmd> --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _runtime(args: argparse.Namespace) -> tuple[str, str]:
    """Torch threads, and the GPU check (the job sees the GPUs it asked for) before any work;
    returns where the job's models run: (device, dtype), cuda/bfloat16 or cpu/float32."""
    import torch

    from masters.devices import placement, require_gpus

    torch.set_num_threads(max(1, args.threads))
    require_gpus(args.gpus, args.command)
    return placement(args.gpus)


def cmd_data(args: argparse.Namespace) -> None:
    from masters.world import vqa

    rows = vqa.generate(args.task, args.split, args.n, args.seed, args.image_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    vqa.write_parquet(rows, args.out)
    print(f"wrote {len(rows)} {args.task}/{args.split} items to {args.out}")


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from masters.world import models, tokenizer

    corpus = tokenizer.corpus_of(args.train)
    outputs = [(args.out, corpus)] + ([(args.judge_out, corpus + tokenizer.judge_corpus())] if args.judge_out else [])
    for out, text in outputs:
        tok = tokenizer.train_tokenizer(text, args.vocab_size)
        models.build_processor(tok, args.architecture, args.image_size).save_pretrained(out)
        print(f"tokenizer: {len(tok)} tokens; processor for {args.architecture} @ {args.image_size}px -> {out}")


def cmd_sft(args: argparse.Namespace) -> None:
    from masters.world import models, sft

    _runtime(args)
    size = models.ModelSize(hidden_size=args.hidden_size, num_layers=args.num_layers,
                            intermediate_size=args.intermediate_size, vision_hidden_size=args.vision_hidden_size,
                            vision_depth=args.vision_depth, vocab_multiple=args.vocab_multiple)
    cfg = sft.SFTConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    sft.build_and_train(args.architecture, size, args.processor, args.train, cfg, args.loss_log, args.out,
                        data=args.data)
    print(f"saved {args.out}")


def _benchmarks(text: str) -> list:
    """The ``--benchmarks`` JSON as :class:`masters.evaluation.Benchmark` s, each task YAML resolved
    in this checkout (the rules pass it as configured)."""
    from masters.evaluation import Benchmark, task_location

    return [Benchmark(**{**b, "task": task_location(b["task"])}) for b in json.loads(text)]


def cmd_evaluate(args: argparse.Namespace) -> None:
    from masters.evaluation import evaluate
    from masters.tables import write_results

    if not (args.out or args.out_dir):
        raise SystemExit("masters evaluate: give --out and/or --out-dir")
    device, dtype = _runtime(args)
    benchmarks = _benchmarks(args.benchmarks)
    summary = evaluate(args.model, benchmarks, batch_size=args.batch_size, limit=args.limit, device=device,
                       dtype=dtype, trust_remote_code=args.trust_remote_code, samples_path=args.samples)
    written = write_results(summary, args.label, out=args.out, out_dir=args.out_dir)
    print(json.dumps(summary["accuracy"], indent=2) + "\n-> " + ", ".join(map(str, written)))


def cmd_judge_benchmark(args: argparse.Namespace) -> None:
    from masters.benchmark_judge import judge_benchmark, load_protocol, read_samples
    from masters.evaluation import task_location
    from masters.judge import chat_backend
    from masters.tables import load_result, result_record

    bench = json.loads(args.benchmark)
    if not bench.get("judge"):
        raise SystemExit(f"masters judge-benchmark: benchmark {bench['name']!r} names no judge protocol")
    protocol = load_protocol(task_location(bench["task"]), bench["judge"])
    unjudged = load_result(args.evaluation)
    samples = read_samples(args.samples, bench["name"])  # before the judge is loaded: bad input fails first
    placed = {}
    if args.backend == "hf":
        device, dtype = _runtime(args)
        placed = {"device": device, "dtype": dtype}
    endpoint = {"base_url": args.base_url, "api_key_env": args.api_key_env or None, "workers": args.workers}
    chat = chat_backend(args.judge_model, args.backend, args.batch_size, args.trust_remote_code, args.gpus,
                        endpoint=endpoint if args.backend == "openai" else None, **placed)
    described = {"protocol": bench["judge"], "backend": args.backend, "model": args.judge_model,
                 **({"base_url": args.base_url} if args.backend == "openai" else {})}
    result, records = judge_benchmark(bench["name"], bench["metric"], protocol, samples, chat, described)
    if getattr(chat, "served", None):
        result["judge"]["served"] = sorted(chat.served)
    if hasattr(chat, "failed"):
        result["judge"]["failed_requests"] = chat.failed
    record = {**result_record(unjudged["model"], unjudged.get("label"), {bench["name"]: result["accuracy"]},
                              {bench["name"]: result["n"]}),
              "benchmark": bench["name"], "metrics": result["metrics"], "judge": result["judge"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.items, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{bench['name']}: {result['accuracy']:.2f} ({result['judge']['asked']} of {result['n']} items judged,"
          f" {result['judge']['unreadable']} unreadable) -> {args.out}")


def cmd_curve(args: argparse.Namespace) -> None:
    from masters.curves import learning_curve

    device, dtype = _runtime(args)
    curve = learning_curve(args.train_dir, _benchmarks(args.benchmarks), args.limit,
                           batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                           device=device, dtype=dtype)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    curve.to_csv(args.out, index=False)
    print(curve.groupby("step")["accuracy"].mean().to_string() + f"\n-> {args.out}")


def cmd_accuracy_table(args: argparse.Namespace) -> None:
    from masters.tables import accuracy_table, write_table

    table = accuracy_table(args.results)
    write_table(table, args.out, caption="Accuracy (%) of the tiny models (lm-eval, greedy, test split)")
    print(table.to_string())


def cmd_questions(args: argparse.Namespace) -> None:
    from masters.questions import draw_questions, write

    questions = draw_questions(args.files, args.per_file, args.seed)
    write(questions, args.out)
    print(f"{len(questions)} training questions from {len(args.files)} files -> {args.out}")


def cmd_snapshot(args: argparse.Namespace) -> None:
    from masters.hub import snapshot

    manifest = snapshot(args.repo, args.revision, args.out, repo_type="model", allow_patterns=args.allow)
    print(f"{args.repo}@{manifest['commit']}: {len(manifest['files'])} files -> {args.out}")


def cmd_fetch_benchmark(args: argparse.Namespace) -> None:
    from masters.evaluation import task_location
    from masters.hub import fetch_benchmark

    manifest = fetch_benchmark(args.name, task_location(args.task), args.revision, args.out, allow_patterns=args.allow)
    print(f"{args.name}: {manifest['repo_id']}@{manifest['commit']} {manifest['split']}, rows {manifest['rows']}"
          f" -> {args.out}")


def cmd_dataset(args: argparse.Namespace) -> None:
    import shutil

    from masters.hub import convert_dataset, dataset_files, snapshot

    spec = json.loads(args.spec)
    fetched = None
    if "hub" in spec:
        fetched = Path(args.out).with_suffix(".src")
        snapshot(spec["hub"], spec["revision"], fetched, repo_type="dataset", allow_patterns=spec["files"])
    files = dataset_files(spec, fetched)
    rows = convert_dataset(args.name, files, spec["columns"], args.out)
    if fetched is not None and not args.keep_source:
        shutil.rmtree(fetched)
    print(f"dataset {args.name}: {rows} questions from {len(files)} files -> {args.out}")


def cmd_revisions(args: argparse.Namespace) -> None:
    from masters import config
    from masters.experiments import Design
    from masters.hub import check_pins, config_pins, is_pinned

    repo = Path(__file__).resolve().parent.parent
    design = Design(config.load([repo / "config.yaml", *args.configfile], repo))
    pins = config_pins(design, repo)
    if not args.check:
        print("| kind | name | repository | revision | pinned |\n|---|---|---|---|---|")
        for pin in pins:
            print(f"| {pin.kind} | {pin.name} | {pin.repo_id} | {pin.revision} | {'yes' if is_pinned(pin.revision) else 'NO'} |")
        return
    rows = check_pins(pins)
    print("| kind | name | repository | revision | resolves to | main now |\n|---|---|---|---|---|---|")
    for r in rows:
        found = r["error"] or r["commit"]
        head = "" if r["main"] is None else ("same" if r["main"] == r["commit"] else r["main"])
        print(f"| {r['kind']} | {r['name']} | {r['repo_id']} | {r['revision']} | {found} | {head} |")
    failed = [r["name"] for r in rows if r["error"]]
    if failed:
        raise SystemExit(f"revisions: {len(failed)} of {len(rows)} not found on the Hub: {', '.join(failed)}")


def cmd_memory_plan(args: argparse.Namespace) -> None:
    from masters import config, memory
    from masters.experiments import Design
    from masters.resources import all_families

    repo = Path(__file__).resolve().parent.parent
    design = Design(config.load([repo / "config.yaml", *args.configfile], repo))
    given = {name: float(b) * 1e9 for name, b in (item.split("=", 1) for item in args.params)}

    def count(name: str) -> float:
        if name in given:
            return given[name]
        return memory.parameters_of(design.model_dir(name))  # a snapshot taken by the snapshot rule

    gpus = {f: r.resources["gpu"] for f, r in all_families(design.config["resources"], environ={}).items()}
    for student, roles in design.students.items():
        rows = memory.plan(count(student), {m: count(m) for m in roles.values()}, gpus, gpu_gb=args.gpu_gb)
        print(memory.markdown(student, rows) + "\n")


def cmd_table(args: argparse.Namespace) -> None:
    from masters.tables import write_paper_table

    spec = json.loads(Path(args.spec).read_text()) if args.spec.endswith(".json") else json.loads(args.spec)
    paths = write_paper_table(spec, args.out, caption=spec.get("caption", ""))
    print(paths[1].read_text())


def cmd_fidelity(args: argparse.Namespace) -> None:
    from masters.fidelity import write_fidelity

    paths = write_fidelity(json.loads(args.spec), args.out)
    print(paths[1].read_text())


def cmd_judges(args: argparse.Namespace) -> None:
    from masters.judge_report import write_judge_report

    for path in write_judge_report(json.loads(args.spec), args.out):
        print(f"wrote {path}")


def cmd_figure(args: argparse.Namespace) -> None:
    from masters import figures

    spec = json.loads(args.spec)
    draw = {"fig2": figures.fig2, "figF4": figures.fig_f4, "curves": figures.fig_curves, "fig6": figures.fig6}[args.name]
    paths = draw(spec, args.out)
    print("wrote " + ", ".join(map(str, paths)))


def cmd_trace(args: argparse.Namespace) -> None:
    from masters import config, specs
    from masters.experiments import Design

    repo = Path(args.directory)
    design = Design(config.load([repo / "config.yaml", *args.configfile], repo))
    print("\n".join(specs.trace(design, args.table, args.row)))


def cmd_generate(args: argparse.Namespace) -> None:
    from masters.generation import SamplingParams, generate_responses, label_responses, make_backend
    from masters.questions import load_questions, shard, write

    device, dtype = _runtime(args)
    questions = shard(load_questions(args.questions), args.shard, args.num_shards, args.limit)
    if args.source == "label":  # the dataset answers, one per question (data: labels)
        from transformers import AutoTokenizer

        frame = label_responses(questions, AutoTokenizer.from_pretrained(args.model), model_name="dataset")
        write(frame, args.out)
        print(f"{len(frame)} label responses -> {args.out}")
        return
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    # vLLM: tensor parallel over the job's GPUs; HF: the job's device and dtype
    extra = {"gpus": args.gpus} if args.backend == "vllm" else {"device": device, "dtype": dtype}
    backend = make_backend(args.backend, args.model, trust_remote_code=args.trust_remote_code, **extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame = generate_responses(backend, questions, params, args.out, source=args.source,
                               model_name=args.label or Path(args.model).name, ratio=args.ratio,
                               batch_size=args.batch_size)
    print(f"{len(frame)} responses ({frame.finish_reason.eq('stop').mean():.0%} stopped) -> {args.out}")


def cmd_judge(args: argparse.Namespace) -> None:
    import pandas as pd

    from masters.columns import check_columns
    from masters.judge import chat_backend, judge_responses
    from masters.questions import load_questions, write

    placed = {}
    if args.kind == "llm":  # the rule judge needs no torch (a second or two per job saved)
        device, dtype = _runtime(args)
        placed = {"device": device, "dtype": dtype} if args.backend == "hf" else {}
    responses = pd.read_parquet(args.responses)
    check_columns(responses, ["question_id", "text"], args.responses)
    if args.kind == "llm" and not args.judge_model:
        raise SystemExit("masters judge: --kind llm needs --judge-model")
    chat = chat_backend(args.judge_model, args.backend, args.batch_size, args.trust_remote_code, args.gpus, **placed) \
        if args.kind == "llm" else None
    judged = judge_responses(responses, load_questions(args.questions).set_index("id"), chat, args.max_new_tokens)
    write(judged, args.out)
    print(f"r_acc mean {judged.r_acc.mean():.3f}; parse failures {int(judged.judge_parse_failed.sum())}"
          f" of {len(judged)} -> {args.out}")


def cmd_score(args: argparse.Namespace) -> None:
    from masters.questions import load_questions, write
    from masters.rewards import score_files

    device, dtype = _runtime(args)
    scores = score_files(args.responses, load_questions(args.questions).set_index("id"), args.teacher, args.student,
                         batch_size=args.batch_size, chunk_size=args.chunk_size,
                         trust_remote_code=args.trust_remote_code, device=device, dtype=dtype)
    write(scores, args.out)
    print(f"{len(scores)} responses; mean D {scores.divergence.mean():.4f} -> {args.out}")


def cmd_reward(args: argparse.Namespace) -> None:
    import pandas as pd

    from masters.questions import write
    from masters.rewards import reward_responses

    rows = reward_responses(args.responses, pd.read_parquet(args.scores), distill=args.distill, use=args.reward,
                            alpha=args.alpha, scores_name=args.scores)
    write(rows, args.out)
    print(f"{len(rows)} responses; mean D {rows.divergence.mean():.4f}; mean R {rows.r_total.mean():.3f} -> {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    from masters import training
    from masters.experiments import stage_settings
    from masters.losses import LossWeights
    from masters.questions import load_questions

    if args.backend == "deepspeed" and args.stage_training:
        raise SystemExit("masters train: --stage-training (stages with their own trainable parts or loss terms, as"
                         " LLaVA-KD's recipe) runs with --backend torch only, not deepspeed")
    settings = {}
    for index, text in args.stage_training or []:
        if not index.isdigit() or int(index) >= len(args.stage):
            raise SystemExit(f"masters train: --stage-training {index}: not the index of one of the {len(args.stage)}"
                             " stages")
        settings[int(index)] = stage_settings(json.loads(text))
    if args.backend == "deepspeed" and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: launch
        from masters.zero import relaunch

        sys.exit(relaunch(args.argv, args.processes or max(1, args.gpus), args.gpus))
    device, _ = _runtime(args)
    stages = [training.Stage(teacher=t, responses=r, steps=int(n), ratio=float(ratio), name=name,
                             settings=settings.get(k, ()))
              for k, (name, t, r, n, ratio) in enumerate(args.stage)]
    cfg = training.TrainConfig(lr=args.lr, batch_size=args.batch_size, grad_clip=args.grad_clip,
                               chunk_size=args.chunk_size, save_every=args.save_every,
                               curve_every=args.curve_every, seed=args.seed,
                               weights=LossWeights(beta=args.beta, lam=args.lam, kind=args.loss,
                                                   divergence=args.divergence, skew=args.skew,
                                                   visual_kl=args.visual_kl, rdist=args.rdist, nll=args.nll),
                               sources=tuple(args.sources), frozen=tuple(args.frozen))
    for stage in stages:  # a bad stage setting is an error before any model is loaded
        training.stage_config(cfg, stage)
    backend = None
    if args.backend == "deepspeed":
        from masters.zero import DeepSpeedBackend

        backend = DeepSpeedBackend(args.gpus, args.deepspeed_config)
    elif device != "cpu":
        backend = training.TorchBackend("cuda")  # one GPU; several: training.backend deepspeed
    log = training.train(args.student, stages, load_questions(args.questions), cfg, args.out, backend=backend,
                         progress=backend is None or backend.is_main)
    print(f"trained {len(log)} steps over {len(stages)} stages -> {args.out}/final")


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """--benchmarks, --batch-size, --limit and the runtime flags of the subcommands that run lm-eval."""
    p.add_argument("--benchmarks", required=True, help='JSON list of {"name", "task", "data"?, "metric"?}')
    _setting(p, "--batch-size", "evaluation.batch_size", int)
    p.add_argument("--limit", type=int, default=None, help="score only the first N items per benchmark")
    _add_runtime_flags(p)


def _add_runtime_flags(p: argparse.ArgumentParser, remote: str | None = "the checkpoint's") -> None:
    """--threads, --gpus (and --trust-remote-code) shared by the subcommands that run a model."""
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs this job asked the scheduler for; fewer visible CUDA devices is an error before any work")
    if remote:
        p.add_argument("--trust-remote-code", action="store_true", help=f"allow {remote} own code")


def _setting(p: argparse.ArgumentParser, flag: str, key: str, kind=None, **kw) -> None:
    """A flag whose default and help are the config schema's (``key`` in
    masters/config.schema.yaml), so a default is written once."""
    from masters import config

    p.add_argument(flag, type=kind, default=config.default(key), help=f"{config.describe(key)} [config {key};"
                   " default %(default)s]", **kw)


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
    p.add_argument("--judge-out", default=None,
                   help="also a judge model's tokenizer + processor here (the corpus plus the App. D text)")
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
    p.add_argument("--data", choices=["vqa", "judge"], default="vqa",
                   help="vqa: the train split; judge: App. D judge conversations built from it (a judge model)")
    _add_runtime_flags(p, None)
    p.add_argument("--loss-log", required=True, help="CSV of step, loss, lr")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("evaluate", help="score one checkpoint on benchmarks with lm-eval")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--label", default=None, help="name of the model in tables")
    _add_scoring_flags(p)
    p.add_argument("--samples", default=None, help="optional JSONL of per-item responses")
    p.add_argument("--out", default=None, help="summary JSON of all benchmarks")
    p.add_argument("--out-dir", default=None, help="also (or instead) one summary JSON per benchmark: DIR/<name>.json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("judge-benchmark", help="a judged benchmark's score: its LLM step over an evaluation's samples")
    p.add_argument("--benchmark", required=True, help="JSON of the benchmark entry (name, task, metric, judge)")
    p.add_argument("--evaluation", required=True, help="the evaluation's summary JSON of this benchmark (model, label)")
    p.add_argument("--samples", required=True, help="the evaluation's samples JSONL (responses and docs)")
    _setting(p, "--backend", "benchmark_judge.backend", choices=["hf", "vllm", "openai"])
    p.add_argument("--judge-model", required=True,
                   help="hf/vllm: the judge checkpoint directory; openai: the model name at the endpoint")
    _setting(p, "--base-url", "benchmark_judge.base_url")
    _setting(p, "--api-key-env", "benchmark_judge.api_key_env")
    _setting(p, "--workers", "benchmark_judge.workers", int)
    _setting(p, "--batch-size", "benchmark_judge.batch_size", int)
    _add_runtime_flags(p, "the judge checkpoint's")
    p.add_argument("--items", required=True, help="JSONL of every item's judge replies and value")
    p.add_argument("--out", required=True, help="the judged summary JSON (what the tables read)")
    p.set_defaults(func=cmd_judge_benchmark)

    p = sub.add_parser("curve", help="a learning curve: score every step checkpoint of a trained run")
    p.add_argument("--train-dir", required=True, help="a trained run (its steps/stepN checkpoints, from --curve-every)")
    _add_scoring_flags(p)
    p.add_argument("--out", required=True, help="CSV: step, benchmark, accuracy, n")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("questions", help="draw the training questions every model pre-generates for")
    p.add_argument("--files", nargs="+", required=True, help="question parquet files (id, image, question, answer)")
    _setting(p, "--per-file", "train_questions.per_file", int)
    _setting(p, "--seed", "seed", int)
    p.add_argument("--out", required=True, help="output parquet")
    p.set_defaults(func=cmd_questions)

    p = sub.add_parser("snapshot", help="fetch a Hub model at a revision (configs, safetensors, tokenizer files)")
    p.add_argument("--repo", required=True, help="model repository id, owner/name (token: HF_TOKEN)")
    p.add_argument("--revision", required=True, help="a commit (pinned) or a branch/tag (resolved and recorded)")
    p.add_argument("--allow", nargs="+", default=None, help="fnmatch patterns of the files to fetch"
                                                              " (default: masters.hub.MODEL_FILES)")
    p.add_argument("--out", required=True, help="output directory (written via OUT.partial)")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("fetch-benchmark", help="a Hub benchmark's test data as local parquet, at a resolved commit")
    p.add_argument("--name", required=True, help="the benchmark's name (the table column)")
    p.add_argument("--task", required=True, help="its task YAML (dataset_path, dataset_name or subsets, test_split), or a task or group lm-eval ships")
    p.add_argument("--revision", default=None, help="commit (pinned) or branch of the dataset repository"
                   " (default: the commit the task YAML pins in dataset_kwargs.revision, else main)")
    p.add_argument("--allow", nargs="+", default=None, help="file patterns of the repository to fetch (default: all)")
    p.add_argument("--out", required=True, help="output directory (data.parquet, or <part>.parquet per subset or group task; manifest.json)")
    p.set_defaults(func=cmd_fetch_benchmark)

    p = sub.add_parser("dataset", help="training questions from a Hub dataset or local parquet, in the question"
                                       " schema (id, image, question, answer[, options])")
    p.add_argument("--name", required=True, help="the dataset's name in the config (prefix of its question ids)")
    p.add_argument("--spec", required=True, help="JSON: the config's datasets.<name> entry (hub, revision, files,"
                                                 " columns)")
    p.add_argument("--keep-source", action="store_true", help="keep the fetched Hub files beside the output")
    p.add_argument("--out", required=True, help="output parquet")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("revisions", help="every Hub repository a config fetches, at its revision; --check"
                                         " resolves each on the Hub (needs network)")
    p.add_argument("--configfile", nargs="+", required=True, help="config files merged over config.yaml")
    p.add_argument("--check", action="store_true", help="resolve each revision on the Hub and show main's"
                                                        " commit beside it; exit 1 if one is not found")
    p.set_defaults(func=cmd_revisions)

    p = sub.add_parser("memory-plan", help="per-GPU memory of each GPU rule at paper scale (masters/memory.py)")
    p.add_argument("--configfile", nargs="+", required=True, help="config files merged over config.yaml")
    p.add_argument("--params", nargs="*", default=[], metavar="MODEL=BILLIONS",
                   help="parameter counts; a model not named is counted from its snapshot's safetensors")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU (GB)")
    p.set_defaults(func=cmd_memory_plan)

    p = sub.add_parser("table", help="one paper table (mean ± std over seeds) from evaluation summaries")
    p.add_argument("--spec", required=True, help="JSON (or a .json file): benchmarks, columns (column -> benchmarks averaged into it), average, literature, rows")
    p.add_argument("--out", required=True, help="output path stem: writes STEM.csv, STEM.md, STEM.tex")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("fidelity", help="whether the paper's orderings hold, from evaluation summaries")
    p.add_argument("--spec", required=True, help="JSON: the claims, each with its table's rows and result files")
    p.add_argument("--out", required=True, help="output path stem: writes STEM.csv and STEM.md")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("judges", help="LLM judges vs the rule judge on the same responses (tables/judges)")
    p.add_argument("--spec", required=True, help='JSON {"pairs": [{"judge", "source", "llm", "rule"}, ...]}')
    p.add_argument("--out", required=True, help="output stem (.csv, .md)")
    p.set_defaults(func=cmd_judges)

    p = sub.add_parser("figure", help="a paper figure (PNG + PDF) from result files")
    p.add_argument("name", choices=["fig2", "figF4", "curves", "fig6"], help="which figure")
    p.add_argument("--spec", required=True, help="JSON: the result files the figure reads")
    p.add_argument("--out", required=True, help="output path stem: writes STEM.png, STEM.pdf")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("trace", help="print the chain of files behind one row of a table")
    p.add_argument("table", help="a table of the config, e.g. table1")
    p.add_argument("row", help="the row's label, e.g. '+Reward Feedback'")
    p.add_argument("--configfile", nargs="*", default=[],
                   help="config files merged over DIRECTORY/config.yaml, as `snakemake --configfile` does")
    p.add_argument("--directory", default=".", help="the workflow's directory (holding config.yaml)")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("accuracy-table", help="table of per-benchmark accuracy from evaluate JSONs")
    p.add_argument("--results", nargs="+", required=True, help="JSON files written by `masters evaluate`")
    p.add_argument("--out", required=True, help="output path stem: writes STEM.csv, STEM.md, STEM.tex")
    p.set_defaults(func=cmd_accuracy_table)

    from masters import masked_teacher

    masked_teacher.register(sub)

    p = sub.add_parser("generate", help="pre-generate sampled responses per question (METHOD.md §3)")
    p.add_argument("--model", required=True, help="checkpoint directory (a masked teacher or the student)")
    p.add_argument("--label", default=None, help="model name written in the `model` column (default: dir name)")
    p.add_argument("--questions", nargs="+", required=True, help="question parquet files (id, image, question)")
    p.add_argument("--source", required=True, choices=["teacher", "student", "label"],
                   help="who generates; `label` writes the dataset answers (tokenized by --model's tokenizer)")
    p.add_argument("--ratio", type=float, default=0.0, help="mask ratio of the model (0 for the student)")
    _setting(p, "--n", "generation.n_teacher", int)
    for key, kind in (("temperature", float), ("top_p", float), ("top_k", int), ("repetition_penalty", float),
                      ("max_new_tokens", int), ("batch_size", int)):
        _setting(p, "--" + key.replace("_", "-"), f"generation.{key}", kind)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--shard", type=int, default=0, help="with --num-shards: which question shard to use")
    p.add_argument("--num-shards", type=int, default=1, help="split questions into this many disjoint shards")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    _setting(p, "--backend", "generation.backend", choices=["hf", "vllm"])
    _add_runtime_flags(p)
    p.add_argument("--out", required=True, help="responses parquet")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="accuracy reward r_acc of each response (METHOD.md §4)")
    p.add_argument("--responses", required=True, help="responses parquet from `masters generate`")
    p.add_argument("--questions", nargs="+", required=True, help="question parquet files (id, question, answer)")
    _setting(p, "--kind", "judge.kind", choices=["rule", "llm"])
    p.add_argument("--judge-model", default=None, help="judge checkpoint (the paper uses the student)")
    _setting(p, "--max-new-tokens", "judge.max_new_tokens", int)
    _setting(p, "--batch-size", "judge.batch_size", int)
    _setting(p, "--backend", "judge.backend", choices=["hf", "vllm"])
    _add_runtime_flags(p, "the judge checkpoint's")
    p.add_argument("--out", required=True, help="judged responses parquet (adds r_acc, judge_raw, judge_parse_failed)")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("score", help="teacher-forced half of the reward: D per response and pi_ref log-probs"
                                     " (METHOD.md §5), once per stage group")
    p.add_argument("--responses", nargs="+", required=True, help="responses of one stage group (teacher + student)")
    p.add_argument("--questions", nargs="+", required=True, help="question parquet files")
    p.add_argument("--teacher", required=True, help="the stage's masked teacher checkpoint")
    p.add_argument("--student", required=True, help="the reference student checkpoint (pi_ref)")
    _setting(p, "--batch-size", "reward.batch_size", int)
    _setting(p, "--chunk-size", "reward.chunk_size", int)
    _add_runtime_flags(p, "the checkpoints'")
    p.add_argument("--out", required=True, help="scores parquet (question_id, source, sample_idx, divergence,"
                                                " ref_logprobs)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("reward", help="distillation reward and total reward of judged responses (METHOD.md §5)")
    p.add_argument("--responses", nargs="+", required=True, help="judged responses of one stage group")
    p.add_argument("--scores", required=True, help="their scores (`masters score` of the same responses)")
    _setting(p, "--distill", "reward.distill", choices=["normalized", "raw"])
    _setting(p, "--reward", "reward.use", choices=["both", "acc", "distill"])
    _setting(p, "--alpha", "reward.alpha", float)
    p.add_argument("--out", required=True, help="rewarded responses parquet")
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("train", help="offline stage-by-stage training of the student (METHOD.md §6)")
    p.add_argument("--student", required=True, help="initial student checkpoint (pi_ref)")
    p.add_argument("--questions", nargs="+", required=True, help="question parquet files")
    p.add_argument("--stage", nargs=5, action="append", required=True,
                   metavar=("NAME", "TEACHER", "RESPONSES", "STEPS", "RATIO"),
                   help="one stage, in order: the teacher's name (for the log), teacher dir, rewarded responses"
                        " parquet, steps, mask ratio")
    p.add_argument("--stage-training", nargs=2, action="append", metavar=("INDEX", "JSON"),
                   help="one stage's own settings over the run's (0-based index; JSON of frozen, beta, lam, visual_kl,"
                        " rdist, nll): e.g. LLaVA-KD's DPT / SFT / DFT as three stages")
    p.add_argument("--loss", choices=["masters", "jsd"], default="masters", help="GRPO + KL + JSD, or JSD only")
    p.add_argument("--sources", nargs="+", default=["teacher", "student"], help="response sources to train on")
    for key, kind in (("lr", float), ("batch_size", int), ("beta", float), ("lam", float), ("grad_clip", float),
                      ("chunk_size", int), ("save_every", int)):
        _setting(p, "--" + key.replace("_", "-"), f"training.{key}", kind)
    from masters.divergences import DIVERGENCES  # light: no torch at import

    _setting(p, "--divergence", "training.divergence", choices=list(DIVERGENCES))
    _setting(p, "--skew", "training.skew", float)
    for key in ("visual_kl", "rdist", "nll"):
        _setting(p, "--" + key.replace("_", "-"), f"training.{key}", float)
    _setting(p, "--frozen", "training.frozen", nargs="*", choices=["vision", "projector", "llm"])
    p.add_argument("--curve-every", type=int, default=0,
                   help="also save a checkpoint every N steps (and before the first) under OUT/steps/stepN,"
                        " for learning curves; 0: none")
    p.add_argument("--seed", type=int, default=0, help="data-order seed")
    _setting(p, "--backend", "training.backend", choices=["torch", "deepspeed"])
    p.add_argument("--deepspeed-config", type=json.loads, default={}, metavar="JSON",
                   help="deepspeed: entries merged over the generated ZeRO-3 config (config training.deepspeed)")
    p.add_argument("--processes", type=int, default=0,
                   help="deepspeed: processes to launch (0: one per GPU of --gpus, at least one; gloo on the CPU)")
    _add_runtime_flags(p, None)
    p.add_argument("--out", required=True, help="output directory (stage checkpoints, final/, train_log.csv)")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command itself: in the warm worker if one serves this run (masters.worker)
        from masters.worker import run_remote

        status = run_remote(sys.argv)
        if status is not None:
            return status
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # the command line (a relaunch repeats it)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
