#!/usr/bin/env python3
"""Transcribe the paper's Tables 3 and 4 (the reported numbers of other models and of the
paper's own Masters students) and Table 5f (other distillation methods without and with Masters)
from the seed text into configs/paper/reported_table{3,4,5f}.csv.

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


# Table 5f's method names as the seed's text extraction spells two of them, and as their papers
# do (the paper's references [37] "Distillm" and [39] "Vlsi")
TYPOS = {"DistILM": "DistiLLM", "VLsL": "VLsI"}


def parse_5f(text: str) -> list[dict[str, str]]:
    """Table 5f: a (without, with Masters) pair of rows per method, in the paper's order. The
    text puts each method's name on one of its two rows (DistiLLM's on the second); the
    ``Masters`` column is "-" (without) or "+" (with), as the workflow's Table 5d cells are."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table 5 |"))
    header = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("VLMs\tMasters\t"))
    names = [COLUMNS[c] for c in lines[header].strip().split("\t")[2:]]
    block = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        block.append([re.sub(r"</?b>", "", c).strip() for c in line.split("\t")])
    if len(block) % 2:
        raise ValueError(f"Table 5f: {len(block)} rows, not pairs of without/with Masters")
    rows = []
    for first, second in zip(block[::2], block[1::2]):
        model = re.sub(r"\s*\[\d+\]$", "", first[0] or second[0])
        for word, right in TYPOS.items():
            model = model.replace(word, right)
        for cells, mark in ((first, "✗"), (second, "✓")):
            if cells[2] != mark:
                raise ValueError(f"Table 5f, {model}: expected {mark} in the Masters column, got {cells[2]!r}")
            values = [f"{float(c):.1f}" for c in cells[3:]]
            rows.append({"model": model, "Masters": "-" if mark == "✗" else "+", "source": "paper Table 5f",
                         **dict(zip(names, values, strict=True))})
    return rows


def main(argv: list[str]) -> int:
    seed = Path(argv[0]) if argv else next((REPO.parent / "shared/seeds").glob("000_*.txt"))
    text = seed.read_text()
    for table in (3, 4, "5f"):
        rows = parse_5f(text) if table == "5f" else parse(text, table)
        out = REPO / f"configs/paper/reported_table{table}.csv"
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
