#!/usr/bin/env python3
"""Transcribe the paper's Tables 3 and 4 (the reported numbers of other models and of the
paper's own Masters students) from the seed text into configs/paper/reported_table{3,4}.csv.

    python scripts/reported_rows.py [../shared/seeds/000_*.txt]

Columns: model, source ("paper Table N"), then one column per benchmark under this project's
benchmark names; "-" in the paper stays empty (missing). tests/test_paper_configs.py checks the
shipped CSVs against this parse of the seed text, so the numbers are never typed in by hand.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = {"AI2D": "ai2d", "ChartQA": "chartqa", "MathVista": "mathvista", "MMB": "mmbench",
           "MMB <sup>CN</sup>": "mmbench_cn", "MM-Vet": "mmvet", "MMMU": "mmmu_val", "MMMU-Pro": "mmmu_pro",
           "MMStar": "mmstar", "BLINK": "blink", "SEED": "seedbench", "SEED2+": "seedbench_2_plus",
           "RWQA": "realworldqa"}


def parse(text: str, table: int) -> list[dict[str, str]]:
    """The rows of the paper's Table ``table`` (the tab-separated block after its caption)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Table {table} |"))
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("VLMs\t"))
    names = [COLUMNS[c] for c in lines[header].split("\t")[1:]]
    rows = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        cells = [re.sub(r"</?b>", "", c).strip() for c in line.split("\t")]
        model = re.sub(r"\s*\[\d+\]$", "", cells[0])
        values = ["" if c == "-" else f"{float(c):.1f}" for c in cells[1:]]
        if len(values) != len(names):
            raise ValueError(f"Table {table}, {model}: {len(values)} values for {len(names)} columns")
        rows.append({"model": model, "source": f"paper Table {table}", **dict(zip(names, values))})
    return rows


def main(argv: list[str]) -> int:
    seed = Path(argv[0]) if argv else next((REPO.parent / "shared/seeds").glob("000_*.txt"))
    text = seed.read_text()
    for table in (3, 4):
        rows = parse(text, table)
        out = REPO / f"configs/paper/reported_table{table}.csv"
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
