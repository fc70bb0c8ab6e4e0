"""Benchmark evaluation with lm-eval (METHOD.md §8: greedy decoding, accuracy in %).

A benchmark is a config entry naming an lm-eval task: either a task YAML of this repo
(``benchmarks/*.yaml``, whose local parquet path is replaced by the entry's ``data``) or a
task lm-eval ships (``task: chartqa``). One checkpoint is scored on all its benchmarks in a
single ``lm_eval.simple_evaluate`` call with ``hf-multimodal`` and the chat template.
"""

from __future__ import annotations

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


def task_spec(bench: Benchmark) -> str | dict[str, Any] | list[dict[str, Any]]:
    """What ``simple_evaluate(tasks=[...])`` takes for ``bench``.

    A YAML is loaded with lm-eval's own loader (``include:`` resolved), renamed to
    ``bench.name`` and, when ``bench.data`` is set, pointed at local parquet: that file, or a
    directory fetched from the Hub (:func:`masters.hub.fetch_benchmark`: ``data.parquet``, or
    ``<subset>.parquet`` per config of a ``subsets`` benchmark).
    """
    if not bench.task.endswith((".yaml", ".yml")) and bench.data is None:
        return bench.task  # a task lm-eval ships, loaded by lm-eval (its dataset from the Hub)
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(bench.task) if bench.task.endswith((".yaml", ".yml")) else registered_yaml(bench.task)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {bench.name!r}: task YAML {path} does not exist")
    spec = load_yaml(path)
    spec["task"] = bench.name
    subsets = spec.pop("subsets", None)
    if bench.data is None:
        if subsets:  # one task per dataset config; :func:`evaluate` averages them unweighted
            return [{**spec, "task": f"{bench.name}_{s}", "dataset_name": s} for s in subsets]
        return spec
    data = Path(bench.data)
    if data.is_dir():
        files = {s: data / f"{s}.parquet" for s in subsets} if subsets else {None: data / "data.parquet"}
    else:
        files = dict.fromkeys(subsets or [None], data)  # one file (the tiny world's; a fixture)
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(f"benchmark {bench.name!r}: data file {file} does not exist")
    split = scored_split(spec)
    spec["dataset_path"] = "parquet"  # a Hub benchmark read from a local file of its schema
    spec.pop("dataset_name", None)
    kwargs = {k: v for k, v in (spec.get("dataset_kwargs") or {}).items() if k != "revision"}

    def local(task: str, file: Path) -> dict[str, Any]:
        return {**spec, "task": task, "dataset_kwargs": {**kwargs, "data_files": {split: str(file.resolve())}}}

    if subsets:
        return [local(f"{bench.name}_{s}", file) for s, file in files.items()]
    return local(bench.name, files[None])


def scored_split(spec: dict) -> str:
    """The split lm-eval scores a task on: its test split, else its validation split."""
    return spec.get("test_split") or spec.get("validation_split") or "test"


def registered_yaml(name: str) -> Path:
    """The YAML of a single task lm-eval ships (``chartqa``), to point it at local data; a group
    (``mmmu_val``) cannot be (it is many tasks): lm-eval loads it from the Hub."""
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(name)
    if entry is None:
        raise KeyError(f"benchmark task {name!r}: neither a YAML path nor a task lm-eval ships")
    if "group" in str(entry.kind).lower() or not str(entry.yaml_path).endswith((".yaml", ".yml")):
        raise ValueError(f"benchmark task {name!r} is an lm-eval {entry.kind}, not one task: it cannot read local "
                         "data (no `data`, no `fetch`; lm-eval loads it from the Hub)")
    return Path(entry.yaml_path)


def subtask_names(spec) -> list[str] | None:
    """The tasks of a ``subsets`` benchmark (:func:`task_spec` gave a list), else None."""
    return [t["task"] for t in spec] if isinstance(spec, list) else None


def result_names(bench: Benchmark, spec) -> list[str]:
    """The lm-eval result entries a benchmark's score is the mean of: its subsets' tasks, or itself."""
    return subtask_names(spec) or [bench.name]


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
        log_samples=samples_path is not None,
        bootstrap_iters=0,
    )
    summary: dict[str, Any] = {"model": str(model_dir), "accuracy": {}, "n": {}, "metrics": {}}
    for bench in benchmarks:
        values = []  # a subsets benchmark: the unweighted mean of its tasks
        for name in parts[bench.name]:
            task_result = results["results"].get(name)
            if task_result is None or bench.metric not in task_result:
                raise KeyError(f"lm-eval gave no {bench.metric!r} for benchmark {bench.name!r} ({name}): {task_result}")
            values.append(float(task_result[bench.metric]))
        summary["accuracy"][bench.name] = 100.0 * sum(values) / len(values)
        summary["metrics"][bench.name] = all_metrics(bench, parts[bench.name], results["results"])
        summary["n"][bench.name] = sum(int(results["n-samples"][name]["effective"]) for name in parts[bench.name])
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
