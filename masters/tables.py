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


def write_table(table: pd.DataFrame, stem: str | Path, caption: str = "", decimals: int = 1) -> list[Path]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.tex``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rounded = table.round(decimals)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    rounded.to_csv(paths[0])
    markdown = rounded.to_markdown(floatfmt=f".{decimals}f")
    paths[1].write_text((f"{caption}\n\n" if caption else "") + markdown + "\n")
    paths[2].write_text(rounded.to_latex(float_format=f"%.{decimals}f", caption=caption or None) + "\n")
    return paths
