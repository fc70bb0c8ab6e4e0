"""The training questions (METHOD.md §3): drawn once from the question files, then read by every
generation, judge, reward and training job, each of which checks the ids it needs are there."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from masters.columns import QUESTION_COLUMNS, check_columns


def draw_questions(files: list[str], per_file: int | None, seed: int) -> pd.DataFrame:
    """``per_file`` questions from each file (seeded, without replacement, in file order), or all."""
    frames = []
    for path in files:
        frame = pd.read_parquet(path)
        check_columns(frame, QUESTION_COLUMNS + ["answer"], path)
        if per_file and per_file < len(frame):
            frame = frame.sample(n=per_file, random_state=seed).sort_index()
        frames.append(frame)
    questions = pd.concat(frames, ignore_index=True)
    repeated = questions["id"][questions["id"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"question ids repeat across {files}: {repeated[:5]}")
    return questions


def load_questions(paths: list[str]) -> pd.DataFrame:
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    check_columns(frame, QUESTION_COLUMNS, f"questions {paths}")
    return frame


def shard(questions: pd.DataFrame, index: int = 0, count: int = 1, limit: int | None = None) -> pd.DataFrame:
    """The ``index``-th of ``count`` disjoint shards (stage data `partition`), its first ``limit``."""
    if count > 1:
        questions = questions.iloc[index::count].reset_index(drop=True)
    return questions.iloc[:limit] if limit else questions


def questions_of(responses: pd.DataFrame, questions: pd.DataFrame, what: str) -> pd.DataFrame:
    """The question row of every response (``questions`` indexed by id), in the responses' order."""
    missing = sorted(set(responses.question_id) - set(questions.index))
    if missing:
        raise KeyError(f"{what}: question ids not in the questions files: {missing[:5]}")
    return questions.loc[responses.question_id]


def write(frame: pd.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
