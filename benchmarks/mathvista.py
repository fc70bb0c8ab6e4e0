"""MathVista (testmini, 1,000 items) as lm-eval ``!function``s: lmms-eval's prompt
(``mathvista_testmini_format``, zero-shot) and MathVista's own normalization and comparison
(``calculate_score.py``), with the answer extracted from the response by rules where the
references ask an LLM (lmms-eval read at commit 75571cfe; notes in benchmarks/REFERENCES.md):

* **Prompt** (``create_one_query``, format-prompt): the question (+ `` (Unit: u)``), the choices
  as ``A. text`` lines, then the answer-type instruction (:data:`HINTS`), joined by newlines. The
  dataset's own ``query`` column (the official hint-first prompt) is not used, as in lmms-eval.
* **Extraction.** lmms-eval keeps a response as it is when it is empty, equals a choice's text,
  or parses as the integer or float the question wants; every other response goes to GPT-4o with
  MathVista's five-example extraction prompt. Here those cases are the same, and the rest is read
  by rules instead of an LLM (:func:`extract`): a choice letter (:func:`mcq.extract_letter`, bare
  or after an answer phrase) or the one choice text the response contains; the number after the
  last "answer is"/"Answer:" or else the last number; the last ``[...]`` for a list. What no rule
  reads counts as wrong, and ``extracted`` reports the share the rules read: the part a judge
  could still change. Under the format prompt nearly every response is a bare letter or number.
* **Normalization** (official): a choice letter, bare or as ``(X)``, becomes the choice's text,
  any other text the choice nearest by edit distance; an integer ``str(int(float(x)))``; a float
  ``str(round(float(x), precision))``; a list ``str(x)``; compared with the answer as strings.
  lmms-eval passes the dataset's float ``precision`` (``1.0``) to ``round``, whose TypeError its
  bare ``except`` turns into a wrong answer for every float question: here ``int(precision)``,
  as the official code (whose JSON holds ints) intends.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from nltk.metrics.distance import edit_distance

sys.path.insert(0, str(Path(__file__).parent))
import mcq  # noqa: E402  (the benchmarks directory is not a package: lm-eval loads it by path)

HINTS = {  # format-prompt: answer type (and float precision) -> the instruction
    "multi_choice": mcq.LETTER_INSTRUCTION,
    "integer": "Answer the question using a single integer number.",
    ("float", 1): "Answer the question using a single floating-point number with one decimal place.",
    ("float", 2): "Answer the question using a single floating-point number with two decimal places.",
    "list": "Answer the question using a Python list.",
}
NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
ANSWER_PHRASE = re.compile(r"(?:answer is|answer:)\s*\(?\$?\s*(" + NUMBER + ")", re.IGNORECASE)


def _choices(doc: dict) -> list[str]:
    return [str(c) for c in (doc.get("choices") or [])]


def _precision(doc: dict) -> int:
    value = doc.get("precision")
    return int(value) if value is not None and value == value else 0


def doc_to_text(doc: dict) -> str:
    question = doc["question"] + (f" (Unit: {doc['unit']})" if mcq._given(doc.get("unit")) else "")
    choices = mcq.lettered(_choices(doc)) if doc["question_type"] == "multi_choice" else ""
    kind = "multi_choice" if doc["question_type"] == "multi_choice" else doc["answer_type"]
    hint = HINTS[(kind, _precision(doc))] if kind == "float" else HINTS[kind]
    return "<image>" + "\n".join(part for part in (question, choices, hint) if part).strip()


def extract(response: str, doc: dict) -> str:
    """The answer a response gives, as text for :func:`normalize` ("" when no rule reads one)."""
    response = response.strip()
    choices, kind = _choices(doc), doc["answer_type"]
    if not response:
        return ""
    if doc["question_type"] == "multi_choice":
        if response in choices:
            return response
        letter = mcq.extract_letter(response, mcq.LETTERS[: len(choices)])
        if letter:
            return letter
        return mcq.mmbench_infer_text(response, dict(zip(mcq.LETTERS, choices)))  # the one choice named
    try:
        if kind == "integer":
            return str(int(response))
        if kind == "float":
            return str(float(response))
    except ValueError:
        pass
    if kind == "list":
        found = re.findall(r"\[[^\[\]]*\]", response)
        return found[-1] if found else ""
    phrase = ANSWER_PHRASE.findall(response)
    numbers = phrase or re.findall(NUMBER, response)
    return numbers[-1].replace(",", "") if numbers else ""


def normalize(extraction: str, doc: dict) -> str | None:
    """MathVista's ``normalize_extracted_answer`` (None: not a valid answer of the type)."""
    choices, kind = _choices(doc), doc["answer_type"]
    if doc["question_type"] == "multi_choice":
        text = str(extraction).strip()
        bracketed = re.findall(r"\(([a-zA-Z])\)", text)
        if bracketed:
            text = bracketed[0].upper()
        letters = list(mcq.LETTERS[: len(choices)])
        if text in letters:
            return choices[letters.index(text)]
        return min(choices, key=lambda c: edit_distance(text, c))  # the first of equally near ones
    try:
        if kind == "integer":
            return str(int(float(extraction)))
        if kind == "float":
            return str(round(float(extraction), _precision(doc)))
    except ValueError:
        return None
    return str(extraction)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    extraction = extract(results[0], doc)
    prediction = normalize(extraction, doc) if extraction else None
    right = prediction is not None and str(prediction).strip() == str(doc["answer"]).strip()
    return {"acc": float(right), "extracted": float(bool(extraction))}


# ---------------------------------------------------------------- the LLM extraction (a judge protocol)

# lmms-eval's mathvista_evals.py DEMO_PROMPT (= the official MathVista extraction prompt), verbatim:
# five examples of a response and the answer extracted from it.
DEMO_PROMPT = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""


def extraction_messages(doc: dict, response: str, attempt: int) -> list[dict] | None:
    """lmms-eval's ``create_test_prompt`` for a response the rules cannot read (None: they can):
    the examples, the dataset's ``query`` (the official hint-first question), the response."""
    if extract(response, doc):
        return None
    prompt = f"{DEMO_PROMPT.strip()}\n\n{doc.get('query') or doc['question']}\n\n{response.strip()}\n\nExtracted answer: "
    return [{"role": "user", "content": prompt}]


def read_extraction(reply: str, doc: dict) -> str:
    """The judge's reply is the extracted answer (lmms-eval keeps it as it is)."""
    return reply.strip()


def judged_score(items: list[dict]) -> dict[str, float]:
    """Accuracy with the judge's extraction where the rules read nothing (``judged``: their share)."""
    right = []
    for item in items:
        doc, response = item["doc"], item["response"]
        extraction = item["judged"] if item["asked"] else extract(response, doc)
        prediction = normalize(extraction, doc) if extraction else None
        right.append(prediction is not None and str(prediction).strip() == str(doc["answer"]).strip())
    n = max(len(items), 1)
    return {"acc": sum(right) / n, "judged": sum(item["asked"] for item in items) / n}


JUDGE = {"prompt": DEMO_PROMPT, "max_new_tokens": 256, "tries": 1,
         "request": extraction_messages, "read": read_extraction, "score": judged_score}
