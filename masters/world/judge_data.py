"""Training data for the world's judge model: the App. D Prediction Evaluation Prompt
(:func:`masters.judge.eval_messages`, verbatim) over the world's train questions, each with a
candidate answer, and the reply a judge should give — a brief explanation, then the score in
``<answer></answer>`` (App. D). The score is the rule judge's (:func:`masters.judge.rule_score`),
so the LLM judge learns the format and the task, and its agreement with the rule judge on the
real responses (which it never saw) is a measured figure, not a given.

Candidates: the ground truth or another answer of the same task (or another option's text),
each written as a model might write it (case, a final period, a "The answer is" prefix), or a
degenerate reply (empty, repeated). The reply restates both answers before the score, the
"brief explanation" App. D asks for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from masters.judge import eval_messages, rule_score

FORMS = (lambda t: t, lambda t: t.capitalize() + ".", lambda t: t.upper(), lambda t: f"The answer is {t}.")
FORM_WEIGHTS = (0.6, 0.2, 0.1, 0.1)


def reply(generated: str, ground_truth: str, score: int) -> str:
    """The judge's reply: a brief explanation (App. D) that restates both answers, then the score."""
    return f"Generated: {generated.strip() or 'nothing'}. Ground truth: {ground_truth}. <answer>{score}</answer>"


def _candidate(rng: np.random.Generator, answer: str, pool: list[str], options) -> str:
    """A reply a model might give: the right answer or a wrong one (another answer of the task,
    or another option's text), or a degenerate one — then written in one of :data:`FORMS`, the
    same forms for right and wrong, so that only the content tells them apart."""
    kind = rng.random()
    if kind < 0.5:
        text = answer
    elif kind < 0.9:
        if options is not None and len(options) and rng.random() < 0.5:
            text = str(options[int(rng.integers(len(options)))])
        else:
            text = pool[int(rng.integers(len(pool)))]
    else:
        other = pool[int(rng.integers(len(pool)))]
        return ["", f"{other} {other} {other}", f"{answer} {other}"][int(rng.integers(3))]
    return FORMS[int(rng.choice(len(FORMS), p=FORM_WEIGHTS))](text)


def judge_examples(items: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` examples (``messages``: the App. D chat, ``reply``, ``score``) drawn from ``items``
    (VQA rows: ``task``, ``question``, ``answer``, ``options``)."""
    rng = np.random.default_rng(seed)
    pools = {task: sorted(group["answer"].unique()) for task, group in items.groupby("task")}
    rows = []
    for i in rng.integers(len(items), size=n):
        item = items.iloc[int(i)]
        options = item.get("options")
        options = list(options) if options is not None and len(options) else None
        generated = _candidate(rng, str(item["answer"]), pools[item["task"]], options)
        score = rule_score(generated, str(item["answer"]), options)
        rows.append({"messages": eval_messages(item["question"], item["answer"], generated),
                     "reply": reply(generated, str(item["answer"]), score), "score": score})
    return pd.DataFrame(rows)
