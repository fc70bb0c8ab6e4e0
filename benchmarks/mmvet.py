"""MM-Vet (test, 218 items; open answers graded 0-1 by an LLM) as lm-eval ``!function``s and a
judge protocol (:data:`JUDGE`, run by ``masters judge-benchmark`` after the evaluation):

* **Prompt** (lmms-eval's ``mmvet`` since 2024-08, read at commit 75571cfe): "First please perform
  reasoning, and think step by step to provide best answer to the following question:" and a blank
  line before the question; greedy, up to 1,024 new tokens.
* **Grade** (the official ``yuweihao/MM-Vet`` ``mm-vet_evaluator.py``, read at commit 7d717c2f): its
  few-shot table prompt, verbatim (:data:`GRADER_PROMPT`; lmms-eval's copy has "gpt_query_prompt"
  where the official header says "Question", and no blank line before the table), then the row
  ``question | ground truth (<AND>/<OR> spaced) | prediction | ``; the first whitespace token of
  the reply is the grade if it is a number in [0, 1]; otherwise asked again with "Predict the
  correctness of the answer (digit): " appended; still none: 0. The official grader raises the
  temperature by 0.5 per retry (up to 5); the project's judges are greedy, so one retry (a second
  greedy answer to the same prompt would be the same).
* **Score**: the mean grade x 100 (``score``), and per capability (rec, ocr, know, gen, spat,
  math: the items that need it), as the official evaluator reports them.

Without the judge the lm-eval metric ``score`` is NaN: MM-Vet has no rule-based score.
"""

from __future__ import annotations

import math

PRE_PROMPT = ("First please perform reasoning, and think step by step to provide best answer to the "
              "following question: \n\n")
GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")


def doc_to_text(doc: dict) -> str:
    return "<image>" + PRE_PROMPT + doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """No rule can grade an open answer: NaN until ``masters judge-benchmark`` grades it."""
    return {"score": math.nan}


def capabilities(doc: dict) -> set[str]:
    """The item's capabilities: a list (the official JSON) or comma-joined text (the Hub parquet)."""
    value = doc.get("capability") or []
    parts = value.split(",") if isinstance(value, str) else value
    return {p.strip() for p in parts if p.strip()}


def grader_messages(doc: dict, response: str, attempt: int) -> list[dict]:
    """The official grading request (``attempt`` > 0: with the retry instruction)."""
    truth = str(doc["answer"]).replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    row = " | ".join([str(doc["question"]), truth, response, ""])
    return [{"role": "user", "content": GRADER_PROMPT + "\n" + row + (RETRY_SUFFIX if attempt else "")}]


def read_grade(reply: str, doc: dict) -> float | None:
    """The official parse: the first space-separated token as a number in [0, 1], else None."""
    try:
        grade = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return grade if 0.0 <= grade <= 1.0 else None


def score(items: list[dict]) -> dict[str, float]:
    """Mean grade (an unreadable grade is 0, as the official grader counts it), overall and per
    capability (NaN for a capability no item needs)."""
    grades = [(item["judged"] or 0.0, capabilities(item["doc"])) for item in items]
    out = {"score": sum(g for g, _ in grades) / len(grades) if grades else math.nan}
    for cap in CAPABILITIES:
        mine = [g for g, caps in grades if cap in caps]
        out[cap] = sum(mine) / len(mine) if mine else math.nan
    return out


JUDGE = {"prompt": GRADER_PROMPT, "max_new_tokens": 3, "tries": 2,
         "request": lambda doc, response, attempt: grader_messages(doc, response, attempt),
         "read": read_grade, "score": score}
