"""Accuracy reward R_acc (METHOD.md §4; paper Eq. 6, App. D, App. F.7).

Two judges:

* ``llm`` — the App. D two-step protocol. The *Prediction Evaluation Prompt* (system +
  user with question, ground truth and generated text) is sent to a judge model; the score
  is the 0/1 inside ``<answer>…</answer>`` of its reply. If that does not parse, the
  *Accuracy Reward Parsing Prompt* is sent with the first reply as the summary and must
  return 0 or 1. Still unparsable → 0, counted as a parse failure. Raw replies are kept.
  The model behind it is any :class:`JudgeBackend` (default in the workflow: the student).
* ``rule`` — the paper's rule-based R_acc(Δ): normalized exact match, numeric equality
  with tolerance, multiple-choice letter extraction (:func:`rule_score`).

The prompts below are App. D's, verbatim, with the paper's ``{}`` placeholders named.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

# ---------------------------------------------------------------------------------------
# App. D prompts (verbatim; one line per rendered paragraph)

EVAL_SYSTEM_PROMPT = (
    "You are an evaluation assistant that gives accuracy scores compared with Ground Truth "
    "and Generated Text from AI.\n"
    "Question is in <question> </question> tag.\n"
    "Ground Truth is in <ground truth> </ground truth> tag.\n"
    "Generated Text in <generated text> </generated text> tag.\n"
    "After reading the Question, compare the Generated Text against the Ground Truth summary:\n"
    "- If the Generated Text fully and correctly captures the core point \u2192 1\n"
    "- If it is incorrect or irrelevant \u2192 0\n"
    "- If it has repetitive response \u2192 0\n"
    "- If it has empty response \u2192 0\n"
    "Output the numerical evaluation score (0 or 1) after giving a brief explanation.\n"
    "- The evaluation score should be wrapped in <answer> </answer> tag."
)

EVAL_USER_TEMPLATE = (
    "<question>\n"
    "{question}\n"
    "</question>\n"
    "<ground truth>\n"
    "{ground_truth}\n"
    "</ground truth>\n"
    "<generated text>\n"
    "{generated}\n"
    "</generated text>\n"
    "Provide the numerical evaluation score after giving a brief explanation.\n"
    "The evaluation score should be wrapped in <answer> </answer> tag."
)

PARSE_PROMPT_SYSTEM = (
    "You are an evaluation assistant that gives binary accuracy scores (0 or 1) based on "
    "the provided overall summary.\n"
    "The summary will be wrapped inside <overall_summary> and </overall_summary> tag.\n"
    "After reading the summary, briefly output the integer score (0 or 1) without any text.\n"
    "Your final output must include only the integer value."
)

PARSE_PROMPT_USER_TEMPLATE = (
    "<overall_summary>\n"
    "{summary}\n"
    "</overall_summary>\n"
    "Please output your integer accuracy score (0 or 1)\n"
    "based on the summary above without any text."
)


def eval_messages(question: str, ground_truth: str, generated: str) -> list[dict[str, str]]:
    """Chat messages of the Prediction Evaluation Prompt."""
    user = EVAL_USER_TEMPLATE.format(question=question, ground_truth=ground_truth, generated=generated)
    return [{"role": "system", "content": EVAL_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_messages(summary: str) -> list[dict[str, str]]:
    """Chat messages of the Accuracy Reward Parsing Prompt."""
    user = PARSE_PROMPT_USER_TEMPLATE.format(summary=summary)
    return [{"role": "system", "content": PARSE_PROMPT_SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------------------
# Parsing the judge's replies

_ANSWER_TAG = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
_BARE_BINARY = re.compile(r"^\s*([01])\s*\.?\s*$")


def parse_score(text: str | None) -> int | None:
    """The 0/1 inside the last ``<answer>…</answer>`` of ``text`` (tag case and spaces
    inside the tag tolerated); ``None`` when there is no tag or it holds anything else."""
    if not text:
        return None
    found = _ANSWER_TAG.findall(text)
    if not found:
        return None
    inner = found[-1].strip()
    return int(inner) if inner in ("0", "1") else None


def parse_binary(text: str | None) -> int | None:
    """The Parsing Prompt's reply: a bare ``0``/``1`` (surrounding whitespace and a final
    period tolerated), or one inside ``<answer>…</answer>``; otherwise ``None``."""
    if not text:
        return None
    m = _BARE_BINARY.match(text)
    if m:
        return int(m.group(1))
    return parse_score(text)


# ---------------------------------------------------------------------------------------
# The LLM judge


class JudgeBackend(Protocol):
    """A judge model: chat conversations in, greedy completions out (one per conversation)."""

    def generate(self, prompts: list[list[dict]], max_new_tokens: int) -> list[str]: ...


@dataclass
class JudgeResult:
    """One judged response: ``score`` (0/1), the first reply, the second reply (``None`` when
    the first parsed) and whether both failed to parse (then ``score`` is 0)."""

    score: int
    raw_eval: str
    raw_parse: str | None = None
    parse_failed: bool = False

    @property
    def raw_outputs(self) -> list[str]:
        return [self.raw_eval] + ([self.raw_parse] if self.raw_parse is not None else [])


def _item_fields(item: Any) -> tuple[str, str, str]:
    if isinstance(item, Mapping):
        return str(item["question"]), str(item["ground_truth"]), str(item["generated"])
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return str(item[0]), str(item[1]), str(item[2])
    raise ValueError(
        f"a judge item is a mapping with question/ground_truth/generated or a 3-tuple, got {item!r}"
    )


def checked_replies(backend: JudgeBackend, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """One reply per prompt from ``backend``, in order; a backend that returns another count is an error."""
    if not prompts:
        return []
    out = list(backend.generate(prompts, max_new_tokens))
    if len(out) != len(prompts):
        raise RuntimeError(f"judge backend returned {len(out)} outputs for {len(prompts)} prompts")
    return [o if isinstance(o, str) else str(o) for o in out]


def llm_judge(items: Sequence[Any], backend: JudgeBackend, max_new_tokens: int) -> list[JudgeResult]:
    """Judge ``items`` (each ``{"question", "ground_truth", "generated"}`` or such a
    3-tuple) with the App. D two-step protocol, in two batched backend calls at most."""
    fields = [_item_fields(it) for it in items]
    first = checked_replies(backend, [eval_messages(*f) for f in fields], max_new_tokens)
    scores = [parse_score(o) for o in first]
    retry = [j for j, s in enumerate(scores) if s is None]
    second = checked_replies(backend, [parse_messages(first[j]) for j in retry], max_new_tokens)
    results = [JudgeResult(score=s if s is not None else 0, raw_eval=o) for s, o in zip(scores, first)]
    for j, reply in zip(retry, second):
        s = parse_binary(reply)
        results[j] = JudgeResult(score=s if s is not None else 0, raw_eval=first[j], raw_parse=reply,
                                 parse_failed=s is None)
    return results


# ---------------------------------------------------------------------------------------
# The rule judge

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_FULL_NUMBER = re.compile(
    r"^\s*\$?\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+)(?:[eE][-+]?\d+)?\s*%?\s*\.?\s*$"
)
_FRACTION = re.compile(r"^\s*([-+]?\d+)\s*/\s*(\d+)\s*\.?\s*$")
LETTERS = string.ascii_uppercase
NUM_REL_TOL = 1e-6


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation, remove the articles a/an/the, collapse whitespace."""
    text = str(text).lower()
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _to_number(text: str) -> float | None:
    """``text`` as a number when it is one as a whole ("3", "3.0", "1,000", "50%", "$2", "1/2")."""
    m = _FRACTION.match(text)
    if m:
        den = int(m.group(2))
        return int(m.group(1)) / den if den else None
    m = _FULL_NUMBER.match(text)
    if not m:
        return None
    core = re.sub(r"[\s$%]", "", text).rstrip(".").replace(",", "")
    try:
        value = float(core)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    for tok in reversed(found):
        try:
            value = float(tok.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=NUM_REL_TOL, abs_tol=0.0)


_GT_LETTER = re.compile(r"^\s*\(?([A-Za-z])\)?\s*[.:]?\s*$")
_PRED_LETTER_ALONE = _GT_LETTER
_PRED_LETTER_PAREN = re.compile(r"^\s*\(([A-Za-z])\)")
_PRED_LETTER_LEAD = re.compile(r"^\s*([A-Z])\s*[.:)](?:\s|$)")
_PRED_LETTER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=)?\s*(?:option\s*|choice\s*)?(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))",
    re.IGNORECASE,
)


def _letter_of(text: str) -> str | None:
    """The option letter a prediction names: "B", "(B)", "b.", "B. square", "B) square",
    "The answer is B", "Answer: (B)". A lowercase letter counts only alone or in parentheses
    (so "a dog" names no option)."""
    for pat in (_PRED_LETTER_ALONE, _PRED_LETTER_PAREN, _PRED_LETTER_LEAD):
        m = pat.match(text)
        if m:
            return m.group(1).upper()
    found = [m for m in _PRED_LETTER_PHRASE.finditer(text)]
    for m in reversed(found):
        letter = m.group(1) or m.group(2)
        # a case-insensitive match could take the "A" of "is A" only if it is uppercase in text
        if m.group(2) is not None and not m.group(2).isupper():
            continue
        return letter.upper()
    return None


def _option_map(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if not options:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    return {LETTERS[j]: str(v) for j, v in enumerate(options) if j < len(LETTERS)}


def rule_score(
    prediction: str,
    ground_truth: str,
    options: Sequence[str] | Mapping[str, str] | None = None,
) -> int:
    """Rule-based R_acc ∈ {0, 1}: normalized exact match, numeric equality (relative
    tolerance 1e-6; a whole-number answer or else the prediction's last number), and
    multiple choice (the letter the prediction names; with ``options`` — a list in A, B, …
    order or a letter→text mapping — the right option's text also counts, and a ground
    truth given as option text is matched by its letter)."""
    pred, gt = str(prediction or ""), str(ground_truth or "")
    npred, ngt = normalize_answer(pred), normalize_answer(gt)
    if ngt and npred == ngt:
        return 1
    opts = _option_map(options)

    m = _GT_LETTER.match(gt)
    if m:  # a multiple-choice letter
        letter = m.group(1).upper()
        if _letter_of(pred) == letter:
            return 1
        text = opts.get(letter)
        return int(text is not None and bool(npred) and npred == normalize_answer(text))

    if opts and ngt:
        # ground truth given as option text: the prediction may name its letter
        letter = _letter_of(pred)
        if letter is not None and letter in opts and normalize_answer(opts[letter]) == ngt:
            return 1

    gt_num = _to_number(gt)
    if gt_num is not None:
        pred_num = _to_number(pred)
        if pred_num is None:
            pred_num = _last_number(pred)
        return int(pred_num is not None and _close(pred_num, gt_num))
    return 0


# ---------------------------------------------------------------- a responses file, judged


def chat_backend(judge_model: str, backend: str, batch_size: int, trust_remote_code: bool = False, gpus: int = 0,
                 endpoint: dict | None = None, **placement):
    """The LLM judge's chat backend: ``hf`` (batched transformers; ``placement``: its device and
    dtype), ``vllm`` (tensor parallel over ``gpus``) or ``openai`` (an OpenAI-compatible endpoint
    serving the model named ``judge_model``; ``endpoint``: ``base_url``, ``api_key_env``, ``workers``)."""
    from masters.generation import HFChatBackend, OpenAIChatBackend, VLLMChatBackend

    if backend == "openai":
        return OpenAIChatBackend(judge_model, **(endpoint or {}))
    if backend == "vllm":
        return VLLMChatBackend(judge_model, batch_size=batch_size, gpus=gpus, trust_remote_code=trust_remote_code)
    return HFChatBackend(judge_model, batch_size=batch_size, trust_remote_code=trust_remote_code, **placement)


def judge_responses(responses, questions, chat: JudgeBackend | None = None, max_new_tokens: int | None = None):
    """``responses`` (a DataFrame with ``question_id``, ``text``) with ``r_acc``, ``judge_raw`` and
    ``judge_parse_failed`` added; ``questions`` is indexed by id (``question``, ``answer``[, ``options``]).

    Without ``chat``: the rule judge (:func:`rule_score`); with it: :func:`llm_judge` (App. D),
    which needs ``max_new_tokens``.
    """
    from masters.questions import questions_of

    q = questions_of(responses, questions, "responses")
    out = responses.copy()
    if chat is None:
        options = [list(o) if o is not None and len(o) else None for o in q["options"]] if "options" in q \
            else [None] * len(q)
        out["r_acc"] = [float(rule_score(t, a, o)) for t, a, o in zip(out.text, q["answer"], options)]
        out["judge_raw"], out["judge_parse_failed"] = "", False
        return out
    # greedy judging is a function of (question, ground truth, generated text): each distinct
    # triple is judged once (a teacher's samples often repeat one answer)
    items = list(zip(q["question"].astype(str), q["answer"].astype(str), out.text.astype(str)))
    distinct = list(dict.fromkeys(items))
    judged = dict(zip(distinct, llm_judge(distinct, chat, max_new_tokens=max_new_tokens)))
    results = [judged[item] for item in items]
    out["r_acc"] = [float(r.score) for r in results]
    out["judge_raw"] = ["\n---\n".join(r.raw_outputs) for r in results]
    out["judge_parse_failed"] = [r.parse_failed for r in results]
    return out
