"""Tables built from result files only (METHOD.md §8): never a typed-in number.

Every table is written three ways from one DataFrame: ``.csv`` (machine), ``.md`` (README,
report) and ``.tex`` (paper).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def load_result(path: str | Path) -> dict:
    """One summary JSON written by ``masters evaluate``."""
    data = json.loads(Path(path).read_text())
    for key in ("accuracy", "mean_accuracy"):
        if key not in data:
            raise KeyError(f"{path}: not an evaluation summary (missing {key!r})")
    return data


def accuracy_table(paths: list[str | Path]) -> pd.DataFrame:
    """Rows = models (the summary's label, else its checkpoint path); columns = benchmarks + Avg."""
    rows = {}
    for path in paths:
        result = load_result(path)
        label = result.get("label") or result["model"]
        rows[label] = {**result["accuracy"], "Avg": result["mean_accuracy"]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def _write(numeric: pd.DataFrame, text: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """``stem.csv`` from the numbers; ``stem.md`` and ``stem.tex`` from the rendered cells."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    numeric.to_csv(paths[0])
    markdown = text.to_markdown(disable_numparse=True, stralign="right")
    paths[1].write_text((f"{caption}\n\n" if caption else "") + markdown + "\n")
    paths[2].write_text(text.to_latex(caption=caption or None) + "\n")
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
