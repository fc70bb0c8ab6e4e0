"""Paper-scale inputs from the Hugging Face Hub, fetched once at a pinned revision.

A model named in the config as ``{hub: owner/name, revision: <commit>}`` is snapshotted into
``{results}/hub/<name>`` by the ``snapshot`` rule (:func:`snapshot`); a training dataset named
in ``datasets:`` is fetched the same way and converted into the question schema by the
``dataset`` rule (:func:`convert_dataset`), or read from local parquet files.

* The revision is resolved to its commit before any file is fetched and the files are fetched
  at that commit, so a branch that moves during the download cannot mix two versions; the
  commit is recorded in ``.masters-snapshot.json`` beside the files. A revision that is not a
  commit (40 hex digits) is allowed but warned about: it is not pinned.
* Only a model's configs, safetensors weights and tokenizer/processor files are fetched (no
  pickled ``.bin``/``.pt`` weights, no Python files: nothing of the repository runs unless
  the config asks for remote code); a model repository without safetensors weights is an error.
* The token, where one is needed, comes from the environment (``HF_TOKEN``, read by
  ``huggingface_hub``); it is never a flag or a config value.
* A download works in ``OUT.partial`` and is renamed when complete: an interrupted one resumes
  (files already there are not fetched again) and never leaves a half snapshot at ``OUT``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
MANIFEST = ".masters-snapshot.json"
COMMIT = re.compile(r"[0-9a-f]{40}")


class HubError(ValueError):
    """A Hub source that cannot be used as configured; the message names the repository."""


def is_pinned(revision: str) -> bool:
    return bool(COMMIT.fullmatch(revision))


def resolve(repo_id: str, revision: str, repo_type: str = "model", api=None) -> str:
    """The commit ``revision`` (a commit, branch or tag) points to."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    return api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha


def snapshot(repo_id: str, revision: str, out: str | Path, repo_type: str = "model",
             allow_patterns: list[str] | None = None, download: Callable | None = None, api=None) -> dict:
    """Fetch ``repo_id`` at ``revision`` into ``out`` (see the module docstring); the manifest."""
    if download is None:
        from huggingface_hub import snapshot_download as download
    out = Path(out)
    if not is_pinned(revision):
        print(f"warning: {repo_id}@{revision} is not pinned (not a commit): the commit it resolves to now is"
              f" recorded in {out / MANIFEST}; put that commit in the config to pin it", file=sys.stderr)
    commit = resolve(repo_id, revision, repo_type, api)
    patterns = list(allow_patterns or (MODEL_FILES if repo_type == "model" else ["*"]))
    partial = out.with_name(out.name + ".partial")
    download(repo_id, repo_type=repo_type, revision=commit, local_dir=str(partial), allow_patterns=patterns)
    files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(partial).parts)
    if repo_type == "model" and not any(f.endswith(".safetensors") for f in files):
        raise HubError(f"{repo_id}@{commit}: no safetensors weights among {files[:10]} (pickled weights are"
                       " not loaded; convert the checkpoint to safetensors)")
    if not files:
        raise HubError(f"{repo_id}@{commit}: no file matches {patterns}")
    manifest = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit,
                "allow_patterns": patterns, "files": files}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


# ---------------------------------------------------------------- training datasets


def dataset_files(source: dict, fetched: Path | None) -> list[Path]:
    """The parquet files of a dataset: matches of its patterns in the fetched repository, or
    local paths. Each pattern must match at least one file (the error names it)."""
    files: list[Path] = []
    for pattern in source["files"]:
        if fetched is not None:
            found = sorted(p for p in fetched.rglob("*") if p.is_file()
                           and fnmatch.fnmatch(str(p.relative_to(fetched)), pattern))
        else:
            found = sorted(Path(p) for p in _glob(pattern))
        if not found:
            where = source.get("hub", "the local disk")
            raise HubError(f"dataset file pattern {pattern!r} matches no file in {where}")
        files += found
    return files


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])


def convert_dataset(name: str, files: list[Path], columns: dict[str, str], out: str | Path,
                    batch_rows: int = 1024) -> int:
    """Write the rows of ``files`` in the question schema (``id, image, question, answer[,
    options]``), renamed per ``columns`` (question column -> source column), batch by batch.

    ``id`` is ``<name>/<source id>`` (``<name>/<file index>-<row>`` without an id column), so
    ids stay unique across datasets; an answer given as a list (e.g. ChartQA's ``label``) is its
    first element; an image given as raw bytes is wrapped as ``{bytes, path}``. Returns the rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("id", pa.string()), ("image", image_type), ("question", pa.string()), ("answer", pa.string())]
    if "options" in columns:
        fields.append(("options", pa.list_(pa.string())))
    schema = pa.schema(fields)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    with pq.ParquetWriter(partial, schema) as writer:
        for index, path in enumerate(files):
            source = pq.ParquetFile(path)
            missing = sorted(set(columns.values()) - set(source.schema_arrow.names))
            if missing:
                raise HubError(f"datasets.{name}: {path} has no column(s) {missing} (columns mapping:"
                               f" {columns}; the file has {source.schema_arrow.names})")
            offset = 0
            for batch in source.iter_batches(batch_size=batch_rows, columns=sorted(set(columns.values()))):
                table = {"id": _ids(name, batch, columns.get("id"), index, offset),
                         "image": _images(batch.column(columns["image"]), image_type),
                         "question": batch.column(columns["question"]).cast(pa.string()),
                         "answer": _answers(batch.column(columns["answer"]))}
                if "options" in columns:
                    table["options"] = batch.column(columns["options"]).cast(pa.list_(pa.string()))
                writer.write_table(pa.table(table, schema=schema))
                offset += batch.num_rows
            rows += offset
    partial.replace(out)
    return rows


def _ids(name, batch, column, file_index, offset):
    import pyarrow as pa

    if column is None:
        return pa.array([f"{name}/{file_index}-{offset + i}" for i in range(batch.num_rows)])
    return pa.array([f"{name}/{v}" for v in batch.column(column).cast(pa.string()).to_pylist()])


def _images(column, image_type):
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        return column.cast(image_type)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.array([{"bytes": b, "path": None} for b in column.to_pylist()], type=image_type)
    raise HubError(f"image column of type {column.type}: expected {{bytes, path}} structs or raw bytes")


def _answers(column):
    import pyarrow as pa

    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        values = [None if v is None or not len(v) else str(v[0]) for v in column.to_pylist()]
        return pa.array(values, type=pa.string())
    return column.cast(pa.string())


# ---------------------------------------------------------------- benchmark datasets

BENCHMARK_MANIFEST = "manifest.json"


class BenchmarkSource(NamedTuple):
    """What a benchmark reads from the Hub (:func:`benchmark_sources`)."""

    repo_id: str
    split: str
    parts: list[tuple[str, str | None]]  # (file stem, dataset config)
    revision: str | None  # the commit the task pins (``dataset_kwargs.revision``), if it does


def benchmark_sources(task: str | Path) -> BenchmarkSource:
    """What a benchmark's task YAML (or a task or group lm-eval ships, by name) reads from the Hub:
    its dataset id and split, one ``data`` file of the YAML's ``dataset_name`` or one per ``subsets``
    config or per task of the group (all of one dataset, split and revision), and the revision the
    task pins."""
    from masters.evaluation import Benchmark, scored_split, task_parts

    specs = task_parts(Benchmark(name="benchmark", task=str(task)))
    sources = {(spec.get("dataset_path"), scored_split(spec), (spec.get("dataset_kwargs") or {}).get("revision"))
               for spec in specs.values()}
    if len(sources) > 1:
        raise HubError(f"{task}: its tasks read several datasets, splits or revisions {sorted(map(str, sources))}:"
                       " fetch them as separate benchmarks")
    (path, split, revision), = sources
    if not path or path in ("parquet", "json", "csv") or "/" not in str(path):
        raise HubError(f"{task}: dataset_path {path!r} is not a Hub dataset (give the benchmark `data:`)")
    parts = [(stem or "data", spec.get("dataset_name")) for stem, spec in specs.items()]
    return BenchmarkSource(str(path), str(split), parts, None if revision is None else str(revision))


def fetched_revision(revision: str | None, pinned: str | None) -> str:
    """The revision a benchmark's data is fetched at: the config entry's, else the commit its task
    pins, else ``main`` (then warned about by :func:`snapshot`)."""
    return revision or pinned or "main"


def fetch_benchmark(name: str, task: str | Path, revision: str | None, out: str | Path,
                    allow_patterns: list[str] | None = None, download: Callable | None = None, api=None) -> dict:
    """A Hub benchmark's test data as local parquet, at a resolved commit: the dataset repository
    is snapshotted (:func:`snapshot`) at ``revision`` (None: the commit the task pins, else
    ``main``), each config's split is read with ``datasets`` (its README's configs, or the file
    layout) and written as ``OUT/<stem>.parquet`` (``data``, or each subset or task of a group;
    :func:`benchmark_sources`), with ``OUT/manifest.json`` (repository, revision, commit, configs,
    split, rows). Evaluation then reads these files offline, so every score comes from a known
    commit of its dataset."""
    import datasets

    repo_id, split, parts, pinned = benchmark_sources(task)
    revision = fetched_revision(revision, pinned)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    source = partial / "repo"
    fetched = snapshot(repo_id, revision, source, repo_type="dataset", allow_patterns=allow_patterns,
                       download=download, api=api)
    rows = {}
    for stem, config in parts:
        try:
            declared = _declared_files(source, config, split)
            if declared is None:  # no configs in the card: the repository's file layout names the splits
                data = datasets.load_dataset(str(source), config, split=split)
            else:  # only this split's files (`files` may leave the others out)
                kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(Path(declared[0]).suffix, "parquet")
                data = datasets.load_dataset(kind, data_files={split: declared}, split=split)
        except (ValueError, FileNotFoundError) as error:
            raise HubError(f"benchmark {name}: {repo_id}@{fetched['commit']} has no split {split!r} of config"
                           f" {config!r} among the fetched files ({error})") from None
        data.to_parquet(str(partial / f"{stem}.parquet"))
        rows[stem] = len(data)
    manifest = {"benchmark": name, "task": str(task), "repo_id": repo_id, "revision": revision,
                "commit": fetched["commit"], "split": split, "configs": {s: c for s, c in parts}, "rows": rows,
                "allow_patterns": fetched["allow_patterns"]}
    (partial / BENCHMARK_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(source)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


def _declared_files(source: Path, config: str | None, split: str) -> list[str] | None:
    """The files the dataset card's ``configs`` metadata gives ``config``'s ``split`` (None: the
    card declares no configs); an empty match is an error naming the pattern."""
    import yaml

    readme = source / "README.md"
    front = re.match(r"---\n(.*?)\n---", readme.read_text(), re.DOTALL) if readme.is_file() else None
    declared = (yaml.safe_load(front.group(1)) or {}).get("configs") if front else None
    if not declared:
        return None
    for entry in declared:
        if entry.get("config_name", "default") != (config or "default"):
            continue
        for item in entry.get("data_files") or []:
            if isinstance(item, dict) and item.get("split") == split:
                patterns = [item["path"]] if isinstance(item["path"], str) else list(item["path"])
                files = sorted(str(p) for pattern in patterns for p in source.glob(pattern) if p.is_file())
                if not files:
                    raise FileNotFoundError(f"no fetched file matches {patterns}")
                return files
        raise ValueError(f"the card's config {config or 'default'!r} declares no split {split!r}")
    raise ValueError(f"the card declares no config {config or 'default'!r}")


# ---------------------------------------------------------------- every pin of a config


class Pin(NamedTuple):
    """One Hub repository a config fetches, at the revision it fetches."""

    kind: str  # model, dataset (training questions) or benchmark
    name: str  # its name in the config
    repo_id: str
    repo_type: str  # model or dataset
    revision: str


def config_pins(design, repo: str | Path) -> list[Pin]:
    """Every Hub repository the config's runs fetch (the snapshot, dataset and benchmark_data
    rules), at the revision each fetches."""
    from masters.evaluation import task_location

    pins = [Pin("model", name, src["hub"], "model", src["revision"]) for name, src in design.hub_models().items()]
    datasets = design.config.get("datasets", {})
    pins += [Pin("dataset", name, datasets[name]["hub"], "dataset", datasets[name]["revision"])
             for name in design.config["train_questions"]["datasets"] if "hub" in datasets[name]]
    for name in design.hub_benchmarks():
        entry = design.config["benchmarks"][name]
        source = benchmark_sources(task_location(entry["task"], repo))
        pins.append(Pin("benchmark", name, source.repo_id, "dataset",
                        fetched_revision(entry.get("revision"), source.revision)))
    return pins


def check_pins(pins: list[Pin], api=None) -> list[dict]:
    """Each pin against the Hub: the commit its revision resolves to (or the error that stops its
    fetch) and the commit ``main`` points to now, so a pin the Hub lacks, or one that is no longer
    the head, shows before any job runs."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    rows = []
    for pin in pins:
        row = {**pin._asdict(), "commit": None, "main": None, "error": None}
        try:
            row["commit"] = resolve(pin.repo_id, pin.revision, pin.repo_type, api)
            row["main"] = resolve(pin.repo_id, "main", pin.repo_type, api)
        except Exception as error:  # noqa: BLE001 - any failure of the lookup is this pin's finding
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        rows.append(row)
    return rows
