"""Benchmark evaluation with lm-eval (METHOD.md §8: greedy decoding, accuracy in %).

A benchmark is a config entry naming an lm-eval task: either a task YAML of this repo
(``benchmarks/*.yaml``, whose local parquet path is replaced by the entry's ``data``) or a
task lm-eval ships (``task: chartqa``). One checkpoint is scored on all its benchmarks in a
single ``lm_eval.simple_evaluate`` call with ``hf-multimodal`` and the chat template.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_IMAGES = 8  # per item: MMMU-Pro references up to 7 (a one-image task sends one)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``name`` (the table column), the lm-eval task (a YAML path or a
    registered task name), the local data file that replaces the YAML's ``data_files``
    (optional), and the lm-eval metric read as accuracy."""

    name: str
    task: str
    data: str | None = None
    metric: str = "exact_match,none"
    judge: str | None = None  # a judge protocol (masters/benchmark_judge.py): scored after, from the samples


def is_task_yaml(task: str) -> bool:
    """Whether a benchmark's ``task`` is a task YAML (of this repo), not a task lm-eval ships by name."""
    return str(task).endswith((".yaml", ".yml"))


REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout this package is imported from


def task_location(task: str, repo: str | Path | None = None) -> str:
    """A benchmark's ``task`` as lm-eval and the fetch read it: a task YAML as its path under the
    repository ``repo`` (default: this package's checkout; an absolute path stays as it is), a
    task lm-eval ships as its name. Jobs are given the configured (repo-relative) path and
    resolve it here, so no checkout path enters a job's params."""
    return str(Path(repo or REPO_ROOT) / task) if is_task_yaml(task) else task


def task_spec(bench: Benchmark) -> str | dict[str, Any] | list[dict[str, Any]]:
    """What ``simple_evaluate(tasks=[...])`` takes for ``bench``.

    A YAML is loaded with lm-eval's own loader (``include:`` resolved), renamed to
    ``bench.name`` and, when ``bench.data`` is set, pointed at local parquet: that file, or a
    directory fetched from the Hub (:func:`masters.hub.fetch_benchmark`: ``data.parquet``, or
    ``<stem>.parquet`` per config of a ``subsets`` benchmark or per task of an lm-eval group).
    A benchmark of several parts is a list of tasks named ``<name>_<stem>``.
    """
    registered = not is_task_yaml(bench.task)
    if registered and bench.data is None:
        return bench.task  # a task (or group) lm-eval ships, loaded by lm-eval (its dataset from the Hub)
    parts = task_parts(bench)
    if bench.data is None:  # a task YAML of this repo read from the Hub by lm-eval
        specs = list(parts.values())
        return specs[0] if list(parts) == [None] else specs
    data = Path(bench.data)
    files = {stem: data / f"{stem or 'data'}.parquet" if data.is_dir() else data for stem in parts}
    for file in files.values():  # a file (the tiny world's; a fixture) serves every part
        if not file.is_file():
            raise FileNotFoundError(f"benchmark {bench.name!r}: data file {file} does not exist")
    specs = [local_spec(spec, files[stem]) for stem, spec in parts.items()]
    return specs[0] if list(parts) == [None] else specs


def task_parts(bench: Benchmark) -> dict[str | None, dict[str, Any]]:
    """The lm-eval task config(s) of ``bench`` by file stem: ``{None: spec}`` for one task, else one
    per config of a ``subsets`` YAML (``dataset_name`` set) or per task of an lm-eval group."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if is_task_yaml(bench.task):
        leaves = {None: Path(bench.task)}
    else:
        leaves = registered_task(bench.task).leaves
    for path in leaves.values():
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {bench.name!r}: task YAML {path} does not exist")
    specs = {stem: load_yaml(path) for stem, path in leaves.items()}
    if list(specs) != [None]:
        return {stem: {**spec, "task": f"{bench.name}_{stem}"} for stem, spec in specs.items()}
    spec = {**specs[None], "task": bench.name}
    subsets = spec.pop("subsets", None)
    if not subsets:
        return {None: spec}
    return {s: {**spec, "task": f"{bench.name}_{s}", "dataset_name": s} for s in subsets}


def local_spec(spec: dict[str, Any], file: Path) -> dict[str, Any]:
    """``spec`` reading its scored split from the local parquet ``file`` (a Hub dataset's schema)."""
    kwargs = {k: v for k, v in (spec.get("dataset_kwargs") or {}).items() if k != "revision"}
    spec = {k: v for k, v in spec.items() if k != "dataset_name"}
    files = {scored_split(spec): str(file.resolve())}
    return {**spec, "dataset_path": "parquet", "dataset_kwargs": {**kwargs, "data_files": files}}


def scored_split(spec: dict) -> str:
    """The split lm-eval scores a task on: its test split, else its validation split."""
    return spec.get("test_split") or spec.get("validation_split") or "test"


@dataclass(frozen=True)
class RegisteredTask:
    """A task lm-eval ships, as its parts can read local data: ``leaves`` maps a file stem to a task
    YAML (``{None: yaml}`` for one task; a group's tasks, named without the group's prefix), and
    ``weighted`` says whether the score is their mean weighted by size (the group's aggregate)."""

    leaves: dict[str | None, Path]
    weighted: bool


@functools.cache
def registered_task(name: str) -> RegisteredTask:
    """The YAML(s) of a task or group lm-eval ships (``chartqa``; ``mmmu_val``: 30 subjects in 6
    groups), to point them at local data. A group's score is the mean of its tasks weighted by
    their sizes when its ``aggregate_metric_list`` says ``weight_by_size`` (then flattening the
    nested groups gives lm-eval's own number; every level must agree), else unweighted."""
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index

    def entry_of(task: str):
        entry = index.get(task)
        if entry is None:
            raise KeyError(f"benchmark task {task!r}: neither a YAML path nor a task lm-eval ships")
        return entry

    def is_group(entry) -> bool:
        return "group" in str(entry.kind).lower()

    def weighting(entry) -> bool:
        aggregate = entry.cfg.get("aggregate_metric_list") or []
        return bool(aggregate) and all(a.get("weight_by_size", False) for a in aggregate)

    top = entry_of(name)
    if not is_group(top):
        if not is_task_yaml(top.yaml_path):
            raise ValueError(f"benchmark task {name!r} is an lm-eval {top.kind} without a YAML: it cannot read "
                             "local data (no `data`, no `fetch`; lm-eval loads it from the Hub)")
        return RegisteredTask({None: Path(top.yaml_path)}, False)
    leaves: dict[str | None, Path] = {}

    def walk(entry) -> None:
        if weighting(entry) != weighting(top):
            raise ValueError(f"benchmark task {name!r}: its group {entry.name!r} aggregates otherwise than the"
                             " whole group: flattening it would change the score")
        for child in entry.cfg.get("task") or []:
            if not isinstance(child, str):
                raise ValueError(f"benchmark task {name!r}: group {entry.name!r} defines a task inline: it cannot"
                                 " read local data")
            sub = entry_of(child)
            if is_group(sub):
                walk(sub)
            else:
                leaves[child.removeprefix(f"{name}_")] = Path(sub.yaml_path)

    walk(top)
    return RegisteredTask(leaves, weighting(top))


def weighted_by_size(bench: Benchmark) -> bool:
    """Whether ``bench``'s parts are averaged by size: a group lm-eval ships, read from local data
    (without ``data`` lm-eval aggregates the group itself)."""
    registered = not is_task_yaml(bench.task)
    return registered and bench.data is not None and registered_task(bench.task).weighted


def subtask_names(spec) -> list[str] | None:
    """The tasks of a ``subsets`` benchmark (:func:`task_spec` gave a list), else None."""
    return [t["task"] for t in spec] if isinstance(spec, list) else None


def result_names(bench: Benchmark, spec) -> list[str]:
    """The lm-eval result entries a benchmark's score is the mean of: its parts' tasks, or its task (a
    task or group lm-eval loads itself is reported under its own name)."""
    return subtask_names(spec) or [spec if isinstance(spec, str) else bench.name]


def all_metrics(bench: Benchmark, names: list[str], results: dict) -> dict[str, float | None]:
    """Every score lm-eval gave the benchmark's task(s), in %: the per-category ones too (MMBench's
    L2 categories, SEED-Bench's dimensions, SEED-Bench-2-Plus's image types...); a subsets
    benchmark's per subset (``<subset>/<metric>``). NaN (a category without items) is None."""
    out = {}
    for name in names:
        prefix = f"{name.removeprefix(bench.name + '_')}/" if len(names) > 1 else ""
        for key, value in results[name].items():
            metric, _, flt = key.partition(",")
            if flt == "none" and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out[prefix + metric] = None if value != value else 100.0 * float(value)
    return out


def effective_size(name: str, results: dict) -> int:
    """The items lm-eval scored for a task, or for a group it aggregated (its tasks' sum)."""
    if name in results["n-samples"]:
        return int(results["n-samples"][name]["effective"])
    return sum(effective_size(sub, results) for sub in results.get("group_subtasks", {}).get(name, []))


def text_fields(doc: dict) -> dict:
    """The item's fields a judge protocol can read (text, numbers, lists of them; not images)."""
    plain = (str, int, float, bool, type(None))
    return {k: v for k, v in doc.items()
            if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v))}


def evaluate(
    model_dir: str | Path,
    benchmarks: list[Benchmark],
    batch_size: int = 32,
    limit: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    samples_path: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``model_dir`` on ``benchmarks``; returns ``{"accuracy": {name: %}, "n": {...}, ...}``."""
    if all(b.data is not None for b in benchmarks):  # local files only: never reach for the Hub
        os.environ.update(OFFLINE_ENV)
    import gc

    import lm_eval
    import lm_eval.models.hf_vlms  # noqa: F401  (imported here, so that the freeze below covers it)
    from lm_eval.tasks import TaskManager

    # hf-multimodal runs a full gc.collect() after every batch; with transformers and torch
    # imported that scan takes ~0.3 s each (a third of a tiny-world evaluation). Objects that
    # exist now (modules, classes) are never garbage: freeze them out of the collector's scans.
    gc.collect()
    gc.freeze()

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model checkpoint (no config.json)")
    specs = [task_spec(b) for b in benchmarks]
    parts = {b.name: result_names(b, spec) for b, spec in zip(benchmarks, specs)}
    specs = [t for spec in specs for t in (spec if isinstance(spec, list) else [spec])]
    results = lm_eval.simple_evaluate(
        model="hf-multimodal",
        model_args={
            "pretrained": str(model_dir),
            "dtype": dtype,
            "max_images": MAX_IMAGES,
            **({"parallelize": True} if device == "auto" else {}),  # the model over the job's GPUs
            "trust_remote_code": trust_remote_code,
        },
        tasks=specs,
        task_manager=TaskManager(include_defaults=any(isinstance(spec, str) for spec in specs)),
        batch_size=batch_size,
        device="cuda" if device == "auto" else device,
        limit=limit,
        apply_chat_template=True,
        # greedy (METHOD.md §8): no repetition penalty from a checkpoint's generation_config (the
        # Qwen2.5-VL Instruct checkpoints set 1.05, which transformers applies even without sampling)
        gen_kwargs={"repetition_penalty": 1.0},
        log_samples=samples_path is not None,
        bootstrap_iters=0,
    )
    summary: dict[str, Any] = {"model": str(model_dir), "accuracy": {}, "n": {}, "metrics": {}}
    for bench in benchmarks:
        values, sizes = [], []  # a benchmark of parts: their mean, unweighted or by size (a group's)
        for name in parts[bench.name]:
            task_result = results["results"].get(name)
            if task_result is None or bench.metric not in task_result:
                raise KeyError(f"lm-eval gave no {bench.metric!r} for benchmark {bench.name!r} ({name}): {task_result}")
            values.append(float(task_result[bench.metric]))
            sizes.append(effective_size(name, results))
        weights = sizes if weighted_by_size(bench) else [1] * len(values)
        summary["accuracy"][bench.name] = 100.0 * sum(v * w for v, w in zip(values, weights)) / sum(weights)
        summary["metrics"][bench.name] = all_metrics(bench, parts[bench.name], results["results"])
        summary["n"][bench.name] = sum(sizes)
    summary["mean_accuracy"] = sum(summary["accuracy"].values()) / len(benchmarks)
    if samples_path is not None:
        metric_of = {name: b.metric.split(",")[0] for b in benchmarks for name in parts[b.name]}
        with open(samples_path, "w") as f:
            for name, rows in results["samples"].items():
                for row in rows:
                    record = {"benchmark": name, "doc_id": row["doc_id"], "prompt": row["arguments"][0][0],
                              "target": row["target"], "response": row["filtered_resps"],
                              "score": row.get(metric_of.get(name)), "doc": text_fields(row["doc"])}
                    f.write(json.dumps(record, default=str) + "\n")
    return summary
