"""Tables built from result files only (METHOD.md §8): never a typed-in number.

Every table is written three ways from one DataFrame: ``.csv`` (machine), ``.md`` (README,
report) and ``.tex`` (paper).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd


def result_record(model: str, label: str | None, accuracy: dict[str, float], n: dict[str, int]) -> dict:
    """An evaluation summary as this module reads it (:func:`load_result`): the checkpoint, its
    table label, accuracy (%) and item count per benchmark, and their mean."""
    return {"model": model, "label": label, "accuracy": dict(accuracy), "n": dict(n),
            "mean_accuracy": sum(accuracy.values()) / len(accuracy)}


def write_results(summary: dict, label: str | None, out: str | Path | None = None,
                  out_dir: str | Path | None = None) -> list[Path]:
    """``summary`` (:func:`masters.evaluation.evaluate`) as one file of every benchmark (``out``)
    and/or one file per benchmark, ``out_dir/<benchmark>.json`` (what the workflow's tables read)."""
    records = {}
    if out:
        records[Path(out)] = result_record(summary["model"], label, summary["accuracy"], summary["n"])
    for name in summary["accuracy"] if out_dir else []:
        record = result_record(summary["model"], label, {name: summary["accuracy"][name]}, {name: summary["n"][name]})
        extra = {"metrics": summary["metrics"][name]} if name in summary.get("metrics", {}) else {}
        records[Path(out_dir) / f"{name}.json"] = {**record, "benchmark": name, **extra}
    for path, record in records.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    return list(records)


def load_result(path: str | Path) -> dict:
    """One summary JSON written by :func:`write_results` (``masters evaluate``)."""
    data = json.loads(Path(path).read_text())
    for key in ("accuracy", "mean_accuracy"):
        if key not in data:
            raise KeyError(f"{path}: not an evaluation summary (missing {key!r})")
    return data


def accuracy_table(paths: list[str | Path]) -> pd.DataFrame:
    """Rows = models (the summary's label, else its checkpoint path); columns = benchmarks + Avg."""
    rows: dict[str, dict[str, float]] = {}
    for path in paths:  # a model's benchmarks may come in one summary or one per benchmark
        result = load_result(path)
        rows.setdefault(result.get("label") or result["model"], {}).update(result["accuracy"])
    for scores in rows.values():
        scores["Avg"] = sum(scores.values()) / len(scores)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def _write(numeric: pd.DataFrame, text: pd.DataFrame, stem: Path, caption: str, index: bool = True) -> list[Path]:
    """``stem.csv`` from the numbers; ``stem.md`` and ``stem.tex`` from the rendered cells."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    numeric.to_csv(paths[0], index=index)
    markdown = text.to_markdown(disable_numparse=True, stralign="right", index=index)
    paths[1].write_text((f"{caption}\n\n" if caption else "") + markdown + "\n")
    # cells and headers escaped by pandas (tiny_colour -> tiny\_colour), the caption here (accuracy %)
    latex = text.to_latex(caption=re.sub(r"([&%$#_{}])", r"\\\1", caption) or None, index=index, escape=True)
    paths[2].write_text(latex.replace(" ± ", " $\\pm$ ") + "\n")
    return paths


def _cells(frame: pd.DataFrame, decimals: int, prefix: str = "") -> pd.DataFrame:
    return frame.map(lambda v: f"{prefix}{v:.{decimals}f}")


def write_table(table: pd.DataFrame, stem: str | Path, caption: str = "", decimals: int = 1) -> list[Path]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.tex``; returns the paths."""
    return _write(table.round(decimals), _cells(table, decimals), Path(stem), caption)


def seed_table(rows: dict[str, list[str | Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std (over seeds) of per-benchmark accuracy and Avg, one row per label.

    ``rows`` maps a row label (e.g. "+Reward Feedback") to the evaluation summaries of its
    seeds. A label with one seed has std 0; benchmarks must agree across a row's seeds.
    """
    means, stds = {}, {}
    for label, paths in rows.items():
        if not paths:
            raise ValueError(f"table row {label!r} has no result files")
        frame = pd.DataFrame([{**r["accuracy"], "Avg": r["mean_accuracy"]} for r in map(load_result, paths)])
        if frame.isna().any().any():
            raise ValueError(f"table row {label!r}: the seeds were scored on different benchmarks")
        means[label] = frame.mean()
        stds[label] = frame.std(ddof=1) if len(frame) > 1 else frame.iloc[0] * 0.0
    mean, std = pd.DataFrame(means).T, pd.DataFrame(stds).T
    mean.index.name = std.index.name = "model"
    return mean, std


def write_seed_table(rows: dict[str, list[str | Path]], stem: str | Path, caption: str = "", decimals: int = 1) -> list[Path]:
    """``stem.csv`` with numeric means and ``<col>_std`` columns; ``.md``/``.tex`` as "mean ± std"."""
    mean, std = seed_table(rows)
    numeric = mean.join(std.add_suffix("_std")).round(decimals + 2)
    return _write(numeric, _cells(mean, decimals) + _cells(std, decimals, " ± "), Path(stem), caption)


def benchmark_results(paths: list[str | Path]) -> dict[str, float]:
    """Per-benchmark accuracy of one checkpoint from its per-benchmark summaries."""
    out: dict[str, float] = {}
    for path in paths:
        out.update(load_result(path)["accuracy"])
    return out


def column_groups(spec: dict) -> dict[str, list[str]]:
    """A table spec's columns, each with the benchmarks averaged into it (``spec["columns"]``,
    from ``benchmarks.<name>.column``; without it, one column per benchmark)."""
    return spec.get("columns") or {b: [b] for b in spec["benchmarks"]}


def column_scores(scores: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    """One checkpoint's table cells: each column the mean of its benchmarks' scores (the paper's
    MMMU-Pro: the mean of its standard and vision settings)."""
    return {column: float(np.mean([scores[b] for b in members])) for column, members in groups.items()}


CATEGORY_COLUMNS = ["model", "row", "benchmark", "metric", "mean", "std", "seeds"]


def category_table(spec: dict) -> pd.DataFrame:
    """Every score the evaluations gave a measured row's benchmarks beyond the table's one number
    (MMBench's L2 categories, SEED-Bench's dimensions, BLINK's subsets, MM-Vet's capabilities...),
    from the per-benchmark summaries' ``metrics``: one line per row, benchmark and metric, its
    mean and std over the row's seeds (``seeds``: how many gave it; a category without items in
    a run gives none). Reported rows have none."""
    lines = []
    for row in spec.get("rows", []):
        per_seed = []
        for files in row["results"]:
            metrics: dict[str, dict] = {}
            for path in files:
                result = load_result(path)
                if "benchmark" in result and result.get("metrics"):
                    metrics[result["benchmark"]] = result["metrics"]
            per_seed.append(metrics)
        for benchmark in spec["benchmarks"]:
            names = dict.fromkeys(m for seed in per_seed for m in seed.get(benchmark, {}))
            for metric in names:
                values = pd.Series([seed.get(benchmark, {}).get(metric) for seed in per_seed], dtype=float).dropna()
                lines.append({"model": row["model"], "row": row["label"], "benchmark": benchmark, "metric": metric,
                              "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else float("nan"),
                              "seeds": len(values)})
    return pd.DataFrame(lines, columns=CATEGORY_COLUMNS)


def paper_table(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean, std (over seeds) and descriptive cells of one paper table, from result files only.

    ``spec``: ``{"benchmarks": [...], "columns": {column: [benchmarks]} (optional), "average": bool,
    "literature": csv path or None, "rows": [{"model": ..., "label": ..., "columns": {...},
    "results": [[files of seed 0], ...]}]}``. Each cell is the mean of its column's benchmarks
    (:func:`column_scores`), each row's Avg the mean over the columns of that seed, then averaged
    over seeds. Literature rows (model, one CSV column per table column) are appended, labelled
    *reported*; a column they do not report stays empty and their Avg is left empty unless all
    are given.
    A literature column named like a descriptive column of the measured rows (``columns``, e.g.
    Table 5f's ``Masters``) fills that cell of the reported row.
    """
    benchmarks = list(spec["benchmarks"])
    groups = column_groups(spec)
    index, means, stds, cells = [], [], [], []
    for row in spec.get("rows", []):
        seeds = [benchmark_results(files) for files in row["results"]]
        if not seeds:
            raise ValueError(f"table row {row['label']!r} has no result files")
        frame = pd.DataFrame(seeds)
        missing = [b for b in benchmarks if b not in frame.columns or frame[b].isna().any()]
        if missing:
            raise KeyError(f"table row {row['label']!r} ({row['model']}): no result for benchmarks {missing}")
        frame = pd.DataFrame([column_scores(seed, groups) for seed in seeds])
        frame["Avg"] = frame.mean(axis=1)
        index.append((row["model"], row["label"]))
        means.append(frame.mean())
        stds.append(frame.std(ddof=1) if len(frame) > 1 else frame.iloc[0] * 0.0)
        cells.append(row.get("columns") or {})
    descriptive = list(dict.fromkeys(k for row in spec.get("rows", []) for k in (row.get("columns") or {})))
    if spec.get("literature"):
        reported = pd.read_csv(spec["literature"], keep_default_na=False, na_values=[""])
        if "model" not in reported.columns:
            raise KeyError(f"{spec['literature']}: the literature file needs a `model` column")
        for _, rec in reported.iterrows():
            values = pd.Series({c: pd.to_numeric(rec.get(c), errors="coerce") for c in groups}, dtype=float)
            values["Avg"] = values.mean() if values.notna().all() else float("nan")
            index.append((str(rec["model"]), "reported"))
            means.append(values)
            stds.append(values * float("nan"))
            cells.append({k: str(rec[k]) for k in descriptive if k in reported.columns and pd.notna(rec[k])})
    columns = [*groups, "Avg"]
    keys = pd.DataFrame(index, columns=["model", "row"])  # rows may repeat a label (Table 5d)
    mean = pd.DataFrame(means, columns=columns).reset_index(drop=True) if index else pd.DataFrame(columns=columns)
    std = pd.DataFrame(stds, columns=columns).reset_index(drop=True) if index else pd.DataFrame(columns=columns)
    extra = pd.DataFrame(cells, index=keys.index)
    mean.index = std.index = keys.index
    if spec.get("average"):
        mean, std = mean[["Avg"]], std[["Avg"]]
    mean, std = mean.astype(float), std.astype(float)
    mean.index = std.index = pd.MultiIndex.from_frame(keys) if index else pd.MultiIndex.from_tuples([], names=["model", "row"])
    extra.index = mean.index
    return mean, std, extra


def write_paper_table(spec: dict, stem: str | Path, caption: str = "", decimals: int = 1) -> list[Path]:
    """``stem.csv`` (means, ``<col>_std``, descriptive cells); ``.md``/``.tex`` as "mean ± std";
    ``stem.categories.csv``, every per-category score of the measured rows (:func:`category_table`).

    A row of one seed shows its mean only; an empty table (no rows yet) is written with its
    header, so a slot filled later never breaks the workflow.
    """
    mean, std, extra = paper_table(spec)
    flat = lambda frame: frame.reset_index(drop=True)  # noqa: E731 (labels may repeat)
    keys = mean.index.to_frame(index=False)
    numeric = pd.concat([keys, flat(extra), flat(mean.round(decimals + 2)),
                         flat(std.round(decimals + 2).add_suffix("_std"))], axis=1)
    numeric.index.name = None

    def cell(m: float, sd: float, n_seeds: int) -> str:
        if pd.isna(m):
            return ""
        return f"{m:.{decimals}f}" + (f" ± {sd:.{decimals}f}" if n_seeds > 1 and not pd.isna(sd) else "")

    seeds = [len(r["results"]) for r in spec.get("rows", [])] + [1] * (len(mean) - len(spec.get("rows", [])))
    text = pd.DataFrame([[cell(mean.iloc[i, j], std.iloc[i, j], seeds[i]) for j in range(mean.shape[1])]
                         for i in range(mean.shape[0])], columns=mean.columns)
    text = pd.concat([keys, flat(extra).fillna("").astype(str), text], axis=1)
    if text.empty:
        text = pd.DataFrame(columns=["model", "row", *extra.columns, *mean.columns])
    paths = _write(numeric, text, Path(stem), caption, index=False)
    categories = Path(stem).with_suffix(".categories.csv")
    category_table(spec).round(decimals + 2).to_csv(categories, index=False)
    return [*paths, categories]
