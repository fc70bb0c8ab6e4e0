"""Does the run reproduce the paper's orderings? ``results/tables/fidelity.{csv,md}``.

Each claim of the ``fidelity`` config key names a table and some of its rows; it is checked on
the per-seed Avg of those rows (the mean over the table's benchmarks of one seed's evaluation
files, as in :func:`masters.tables.paper_table`), by paired differences over seeds: a row with
one result (an untrained model) is paired with every seed of the other row.

Kinds of claim:

* ``increasing``: each row beats the one before it (Table 1 monotone; Table 2 mid -> large >=
  large only);
* ``best``: the first row beats every other row of the table (Table 5e: R_acc + R_distill);
* ``peak_inside``: the table's best row (by mean Avg) is neither its first nor its last row
  (Table 5a: a middle r_max); compared with the first and the last row (a peak at an end is
  compared with itself: a difference of 0, which does not hold).

A comparison *holds* when the mean paired difference is > 0; the CSV also gives the std of the
difference over seeds (0 with one seed) and its ratio to the mean, so a reader sees whether a
difference is larger than its spread. A claim holds when all its comparisons do. Nothing here
is typed in: every number comes from the evaluation files the spec names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from masters.tables import benchmark_results, column_groups, column_scores

KINDS = ("increasing", "best", "peak_inside")
COLUMNS = ["claim", "table", "comparison", "diff_mean", "diff_std", "seeds", "holds", "claim_holds"]


def seed_averages(row: dict, groups: dict[str, list[str]]) -> list[float]:
    """The Avg of each seed of a table-spec row (``results``: one list of files per seed): the
    mean over the table's columns (``groups``: :func:`masters.tables.column_groups`)."""
    out = []
    for files in row["results"]:
        scores = benchmark_results(files)
        missing = [b for members in groups.values() for b in members if b not in scores]
        if missing:
            raise KeyError(f"row {row['label']!r}: no result for benchmarks {missing}")
        out.append(float(np.mean(list(column_scores(scores, groups).values()))))
    return out


def paired_difference(a: list[float], b: list[float]) -> np.ndarray:
    """``b - a`` per seed; a single value is paired with every seed of the other side."""
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ValueError(f"cannot pair {len(a)} seeds with {len(b)} seeds")
    return np.asarray(b, dtype=float) - np.asarray(a, dtype=float)


def _comparison(claim: str, table: str, a: str, b: str, avgs: dict[str, list[float]]) -> dict:
    diff = paired_difference(avgs[a], avgs[b])
    std = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    return {"claim": claim, "table": table, "comparison": f"{b} - {a}", "diff_mean": float(diff.mean()),
            "diff_std": std, "seeds": int(diff.size), "holds": bool(diff.mean() > 0)}


def check_claim(claim: dict) -> list[dict]:
    """The comparisons of one claim (``{"claim", "table", "kind", "rows": [labels],
    "benchmarks": [...], "table_rows": [table-spec rows]}``), each a CSV record."""
    kind, table, text = claim["kind"], claim["table"], claim["claim"]
    if kind not in KINDS:
        raise ValueError(f"fidelity claim {text!r}: kind must be one of {KINDS}, got {kind!r}")
    rows = {r["label"]: r for r in claim["table_rows"]}
    unknown = [label for label in claim.get("rows", []) if label not in rows]
    if unknown:
        raise KeyError(f"fidelity claim {text!r}: table {table} has no rows {unknown} (rows: {list(rows)})")
    avgs = {label: seed_averages(row, column_groups(claim)) for label, row in rows.items()}
    if kind == "increasing":
        order = claim["rows"]
        pairs = list(zip(order, order[1:]))
    elif kind == "best":
        winner = claim["rows"][0]
        pairs = [(other, winner) for other in rows if other != winner]
    else:  # peak_inside: a peak at an end row is compared with itself, a difference of 0
        labels = list(rows)
        peak = max(labels, key=lambda label: np.mean(avgs[label]))
        pairs = [(labels[0], peak), (labels[-1], peak)]
    out = [_comparison(text, table, a, b, avgs) for a, b in pairs]
    holds = all(r["holds"] for r in out)
    for r in out:
        r["claim_holds"] = holds
    return out


def fidelity_report(spec: dict) -> pd.DataFrame:
    """Every claim's comparisons (``spec``: ``{"claims": [...]}``, see :func:`check_claim`)."""
    records = [r for claim in spec["claims"] for r in check_claim(claim)]
    return pd.DataFrame(records, columns=COLUMNS)


def write_fidelity(spec: dict, stem: str | Path) -> list[Path]:
    """``stem.csv`` (numbers) and ``stem.md`` (a sentence per claim, then the comparisons)."""
    report = fidelity_report(spec)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    report.round(3).to_csv(stem.with_suffix(".csv"), index=False)
    lines = ["Fidelity: the paper's orderings, checked on this run's result files", ""]
    for claim, rows in report.groupby("claim", sort=False):
        lines.append(f"- **{'holds' if rows['claim_holds'].iloc[0] else 'does not hold'}**: {claim} "
                     f"({rows['table'].iloc[0]})")
    shown = report.assign(diff=[f"{m:+.1f} ± {s:.1f}" for m, s in zip(report["diff_mean"], report["diff_std"])])
    lines += ["", shown[["claim", "comparison", "diff", "seeds", "holds"]].to_markdown(index=False), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]
