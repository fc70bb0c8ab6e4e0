"""Learning curves: the student's benchmark accuracy against the training step.

A run trained with ``curve_every`` = N (``figures.curves`` in the config) keeps a stock
checkpoint before its first step and every N steps (``<run>/steps/step<N>``).
:func:`learning_curve` scores each of them with lm-eval, as the evaluation rule does (greedy,
the same task definitions), on the first ``limit`` items of every benchmark (a cheaper, noisier
estimate than the tables' full test sets: the curves show whether a variant is still learning,
has saturated, over-fits or diverges, not its final score), in one process so the imports are
paid once. The figure (:func:`masters.figures.fig_curves`) plots the mean over benchmarks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from masters.evaluation import Benchmark, evaluate

CURVE_COLUMNS = ["step", "benchmark", "accuracy", "n"]


def step_checkpoints(train_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, checkpoint)`` of every ``steps/step<N>`` of a trained run, by step."""
    found = []
    for path in Path(train_dir, "steps").glob("step*"):
        m = re.fullmatch(r"step(\d+)", path.name)
        if m and (path / "config.json").is_file():
            found.append((int(m.group(1)), path))
    if not found:
        raise FileNotFoundError(f"{train_dir}/steps: no step checkpoints (train the run with --curve-every)")
    return sorted(found)


def learning_curve(train_dir: str | Path, benchmarks: list[Benchmark], limit: int | None, batch_size: int = 32,
                   trust_remote_code: bool = False, device: str = "cpu", dtype: str = "float32") -> pd.DataFrame:
    """Accuracy (%) and items scored per (step, benchmark) over a run's step checkpoints."""
    rows = []
    for step, checkpoint in step_checkpoints(train_dir):
        summary = evaluate(checkpoint, benchmarks, batch_size=batch_size, limit=limit,
                           trust_remote_code=trust_remote_code, device=device, dtype=dtype)
        rows += [{"step": step, "benchmark": b.name, "accuracy": summary["accuracy"][b.name], "n": summary["n"][b.name]}
                 for b in benchmarks]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
