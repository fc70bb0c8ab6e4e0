"""Column contracts of the workflow's parquet files (no heavy imports: used by light jobs)."""

from __future__ import annotations

QUESTION_COLUMNS = ["id", "image", "question"]


def check_columns(frame, required: list[str], what: str) -> None:
    """Raise ``KeyError`` naming ``what`` and every missing column."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: missing column(s) {missing}; has {list(frame.columns)}")
