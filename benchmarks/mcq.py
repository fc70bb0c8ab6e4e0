"""Prompts and scoring of the paper's multiple-choice benchmarks (lm-eval ``!function``s), as
lmms-eval scores them (EvolvingLMMs-Lab/lmms-eval, MIT; read at commit 75571cfe, 2026-08-06;
written here from its behaviour, not copied):

* AI2D: options lettered ``A. ...`` one per line, then "Answer with the option's letter from the
  given choices directly."; a response starting with ``X.`` counts as its letter, any other is
  compared whole; case and ASCII punctuation ignored, whitespace not (lm-eval's ``exact_match``
  as lmms-eval's ai2d.yaml configures it) (``ai2d_*``).
* MMStar: the question already lists its options; the letter is extracted with lmms-eval's
  ``extract_mcq_answer`` rule (:func:`extract_letter`); the score is the mean over the 18 L2
  categories of their accuracies (a macro average), as lmms-eval reports ``average``.
* SEED-Bench-2-Plus: options ``A. ...`` to ``D. ...`` after the question (an option that is an
  image file is shown as ``<image>`` text, as lmms-eval does), then the letter instruction; the
  first character of the response is compared with the answer letter, case ignored (the
  SEED-Bench rule, :func:`first_letter_score`); accuracy overall and per
  ``question_image_type`` (Chart, Map, Web).
* SEED-Bench (image items): options ``A. ...`` to ``D. ...`` and the letter instruction; the
  first character of the response vs the answer letter; accuracy over the image items and per
  evaluation dimension (``question_type_id`` 1-9, as the SEED-Bench paper reports them).
* MMMU-Pro (standard, 10 options; vision: the question and options inside the image): the
  official MMMU-Pro prompts; ``<image N>`` references become ``<image>`` placeholders with their
  images in order (as lm-eval's own MMMU task does); scored with the official
  ``mmmu-pro/evaluate.py`` rule for both settings (:func:`mmmu_parse`: the option letter after the
  last "Answer:", else the MMMU parser), its random pick for an unparsable response seeded by
  the item id (deterministic). lmms-eval scores the vision setting by raw string equality
  instead (a bare "B." is wrong there).
* BLINK (val, 14 subsets, up to 4 images per item): "Note: You only need to respond with A, B
  without providing any additional information." before the item's prompt; the letter read as
  lmms-eval 0.7.3 reads it (:func:`blink_letter`: a bare first line, else the last "answer is X",
  else the last ``(X)``, else a leading letter, only among the item's options; the commit read
  first took any leading letter, so "Answer: B" counted as A); the benchmark's score is the
  unweighted mean of the 14 subsets' accuracies.
* RealWorldQA: the question as given (it carries its own instruction); a letter answer is
  compared with :func:`extract_letter`, any other answer by lower-cased equality without a final
  period.
* MMBench (en dev): lmms-eval's prompt (hint, question and options joined by spaces); the option
  read by MMBench's rule (``can_infer``), else by :func:`extract_letter` (lmms-eval's judge-free
  ``mmbench_en_dev_static``; the reference asks GPT there); CircularEval over the rotated copies
  (index + k * 1e6), overall and per L2 category. MMBench-CN (cn dev): the same with lmms-eval's
  Chinese options title and instruction (lmms-eval only writes a submission file for it; it is
  scored here as the English one).

Each prompt starts with one ``<image>`` (lm-eval's ``hf-multimodal`` sends as many images as
the text has placeholders).
"""

from __future__ import annotations

import re
import string

LETTERS = "ABCDEFGHIJ"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PHRASES = ("the correct answer is", "the answer is", "answer is", "the correct option is", "correct answer:",
           "answer:", "i choose", "my answer is", "option")


def extract_letter(response: str, choices: str = "ABCD") -> str:
    """The option letter a free-form response names ("" if none), by lmms-eval's priorities:
    a letter opening the response (10), closing it (9), after an answer phrase (7), as
    ``(X)`` (6), ``X.`` (5), ``X:`` (4), ``X)`` (3), ``X `` (2), anywhere (0); the highest
    priority wins, then the latest position."""
    text = response.strip().strip(",.!?;:'\"")
    if not text:
        return ""
    padded = f" {text} "
    lower = padded.lower()
    found: list[tuple[int, int, str]] = []
    for letter in choices:
        for pattern, priority in ((f"({letter})", 6), (f"{letter}.", 5), (f"{letter}:", 4), (f"{letter})", 3),
                                  (f"{letter} ", 2)):
            for m in re.finditer(r"(?<![A-Za-z])" + re.escape(pattern), padded):
                found.append((priority, m.start(), letter))
    for phrase in PHRASES:
        for m in re.finditer(re.escape(phrase), lower):
            after = re.search(rf"(?<![A-Za-z])([{choices}])(?![A-Za-z])", padded[m.end():])
            if after:
                found.append((7, m.start(), after.group(1)))
    if text[0] in choices and (len(text) == 1 or not text[1].isalpha()):
        found.append((10, 0, text[0]))
    if text[-1] in choices and (len(text) == 1 or not text[-2].isalpha()):
        found.append((9, len(text), text[-1]))
    if not found:
        found = [(0, padded.find(c), c) for c in choices if c in padded]
    return max(found)[2] if found else ""


def lettered(options) -> str:
    """Options one per line as ``A. first``, ``B. second``, ..."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def first_letter_score(response: str, answer: str) -> float:
    """SEED-Bench's rule (both versions): the response's first character is the answer letter,
    case ignored."""
    response = response.strip()
    return float(bool(response) and response[0].lower() == str(answer).strip().lower())


# ---------------------------------------------------------------- AI2D


def ai2d_doc_to_text(doc: dict) -> str:
    return f"<image>{doc['question']}\n{lettered(doc['options'])}\n{LETTER_INSTRUCTION}"


def ai2d_doc_to_target(doc: dict) -> str:
    return LETTERS[int(doc["answer"])]


def ai2d_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    response = results[0]
    m = re.match(r"^\s*([A-Z])\.", response)
    predicted = m.group(1) if m else response
    # lm-eval's exact_match with ignore_case and ignore_punctuation: ASCII punctuation removed,
    # whitespace kept (" C " is not "C"; harness agreement, scripts/harness_agreement.py)
    clean = lambda s: s.lower().translate(str.maketrans("", "", string.punctuation))  # noqa: E731
    return {"exact_match": float(clean(predicted) == clean(ai2d_doc_to_target(doc)))}


# ---------------------------------------------------------------- MMStar


def mmstar_doc_to_text(doc: dict) -> str:
    question = doc["question"].strip().replace(" Please answer yes or no.", "")
    return f"<image>{question}\n{LETTER_INSTRUCTION.rstrip('.')}"


def mmstar_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    score = float(extract_letter(results[0]) == doc["answer"].strip().upper())
    return {"average": {"l2_category": doc["l2_category"], "score": score}}


def mmstar_aggregate(items: list[dict]) -> float:
    """The mean over L2 categories of each category's accuracy (lmms-eval's ``average``)."""
    by: dict[str, list[float]] = {}
    for item in items:
        by.setdefault(item["l2_category"], []).append(item["score"])
    return sum(sum(v) / len(v) for v in by.values()) / len(by)


# ---------------------------------------------------------------- SEED-Bench-2-Plus


def seed2plus_doc_to_text(doc: dict) -> str:
    def option(text: str) -> str:
        return "<image>" if ("jpg" in text or "png" in text) else text

    options = lettered(option(str(doc[f"choice_{c}"])) for c in "ABCD")
    return f"<image>{doc['question']}\n{options}\n{LETTER_INSTRUCTION}"


def seed2plus_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    score = first_letter_score(results[0], doc["answer"])
    kind = str(doc["question_image_type"]).capitalize()
    out = {"all": score}
    for k in ("Chart", "Map", "Web"):
        out[k.lower()] = score if k == kind else None
    return out


def mean_of_scored(values: list[float | None]) -> float:
    """The mean of the items that belong to a category (None: another category's item)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


# ---------------------------------------------------------------- SEED-Bench (image items)

SEED_DIMENSIONS = {1: "scene_understanding", 2: "instance_identity", 3: "instance_attributes",
                   4: "instance_location", 5: "instances_counting", 6: "spatial_relation",
                   7: "instance_interaction", 8: "visual_reasoning", 9: "text_understanding"}


def seed_image_items(dataset):
    """The image items of SEED-Bench (its test split also holds video items)."""
    return dataset.filter(lambda doc: doc["data_type"] == "image")


def seed_images(doc: dict) -> list:
    """SEED-Bench's ``image`` is a list (one picture for an image item)."""
    images = doc["image"]
    return list(images) if isinstance(images, list) else [images]


def seed_doc_to_text(doc: dict) -> str:
    options = lettered(doc[f"choice_{c}"] for c in "abcd")
    return f"<image>{doc['question']}\n{options}\n{LETTER_INSTRUCTION}"


def seed_process_results(doc: dict, results: list[str]) -> dict[str, float | None]:
    score = first_letter_score(results[0], doc["answer"])
    out: dict[str, float | None] = {"seed_image": score}
    for key, name in SEED_DIMENSIONS.items():
        out[name] = score if int(doc["question_type_id"]) == key else None
    return out


# ---------------------------------------------------------------- MMMU-Pro

MMMU_PRO_STANDARD = "Answer with the option letter from the given choices directly."
MMMU_PRO_VISION = (MMMU_PRO_STANDARD + " The last line of your response should be of the following format: "
                   "'Answer: $LETTER' (without quotes) where LETTER is one of options.")


def _options(doc: dict) -> list[str]:
    import ast

    options = doc["options"]
    return [str(o) for o in (ast.literal_eval(options) if isinstance(options, str) else options)]


def mmmu_pro_standard_doc_to_text(doc: dict) -> str:
    text = f"{doc['question']}\n{lettered(_options(doc))}\n{MMMU_PRO_STANDARD}"
    return re.sub(r"<image \d+>", "<image>", text)


def mmmu_pro_standard_images(doc: dict) -> list:
    """The images the question and options refer to, in order of reference (repeats kept)."""
    text = doc["question"] + " " + " ".join(_options(doc))
    return [doc[f"image_{n}"] for n in re.findall(r"<image (\d+)>", text)]


def mmmu_pro_vision_doc_to_text(doc: dict) -> str:
    return "<image>" + MMMU_PRO_VISION


def mmmu_parse(response: str, options: list[str], seed: str) -> str:
    """The option letter of a response (official MMMU-Pro rule, see the module docstring)."""
    import random

    letters = list(LETTERS[: len(options)])
    last = response.rfind("Answer:")
    if last != -1:
        named = [c for c in letters if c in response[last + len("Answer:"):]]
        if len(named) == 1:
            return named[0]
    text = " " + response.strip().strip(",.!?;:'") + " "
    found = [c for c in letters if f"({c})" in text] or [c for c in letters if f"{c} " in text] \
        or [c for c in letters if f"{c}." in text]
    by_text = False
    if not found and len(text.split()) > 5:
        found, by_text = [c for c, o in zip(letters, options) if o.lower() in text.lower()], True
    if not found:
        return random.Random(seed).choice(letters)
    if len(found) == 1:
        return found[0]
    if by_text:
        return max(found, key=lambda c: text.lower().rfind(options[letters.index(c)].lower()))
    return max(found, key=lambda c: max(text.rfind(f"({c})"), text.rfind(f" {c} "), text.rfind(f"{c}.")))


def mmmu_pro_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    predicted = mmmu_parse(results[0], _options(doc), seed=str(doc["id"]))
    return {"acc": float(predicted == str(doc["answer"]).strip())}


# ---------------------------------------------------------------- BLINK


def blink_images(doc: dict) -> list:
    return [doc[f"image_{i}"] for i in range(1, 5) if doc.get(f"image_{i}") is not None]


def blink_doc_to_text(doc: dict) -> str:
    letters = ", ".join(LETTERS[i] for i in range(len(doc["choices"])))
    placeholders = "<image>" * len(blink_images(doc))
    return (f"{placeholders}Note: You only need to respond with {letters} without providing any additional"
            f" information.\n{doc['prompt']}")


def blink_letter(response: str, letters: str) -> str:
    """The option letter of a BLINK response ("" if none), as lmms-eval 0.7.3 reads it, only
    among the item's ``letters``: a first line that is just the letter (``B``, ``(B)``, ``b.``);
    else the last "answer is X" / "Answer: (X)"; else the last ``(X)``; else a leading letter."""
    text = response.strip()
    first = text.split("\n", 1)[0].strip()
    if len(first) <= 4 and (m := re.fullmatch(rf"\(?([{letters}])\)?[.\s:,)]*", first, flags=re.IGNORECASE)):
        return m.group(1).upper()
    stated = re.findall(rf"answers?(?:\s+is)?\s*[:\-]?\s*\(?([{letters}])\)?(?![A-Za-z])", text, flags=re.IGNORECASE)
    bracketed = re.findall(rf"\(([{letters}])\)", text)
    if stated or bracketed:
        return (stated or bracketed)[-1].upper()
    m = re.match(rf"[(\s]*([{letters}])[).\s]*", text, flags=re.IGNORECASE)
    return m.group(1).upper() if m else ""


def blink_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    letter = blink_letter(results[0], LETTERS[: len(doc["choices"])])
    return {"acc": float(letter == doc["answer"].strip("()"))}


# ---------------------------------------------------------------- RealWorldQA


def realworldqa_doc_to_text(doc: dict) -> str:
    return "<image>" + doc["question"].strip()


def realworldqa_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    truth, response = doc["answer"].strip(), results[0]
    if truth.upper() in ("A", "B", "C", "D"):
        return {"exact_match": float(extract_letter(response) == truth.upper())}
    return {"exact_match": float(response.lower().strip().rstrip(".") == truth.lower())}


# ---------------------------------------------------------------- MMBench

MMBENCH_OPTIONS = "There are several options:"
MMBENCH_CN_OPTIONS = "有如下几个选项："
MMBENCH_CN_INSTRUCTION = "请直接使用所提供的选项字母作为答案回答。"
MMBENCH_L2 = {"coarse_perception": "Coarse Perception",
              "fine_grained_single": "Fine-grained Perception (single-instance)",
              "fine_grained_cross": "Fine-grained Perception (cross-instance)",
              "attribute_reasoning": "Attribute Reasoning", "relation_reasoning": "Relation Reasoning",
              "logic_reasoning": "Logic Reasoning"}
_PUNCTUATED = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
               (":", "."), (":", ")"), (":", ")."))


def _given(value) -> bool:
    """A cell that holds text (not None, NaN, "nan" or empty)."""
    return value is not None and value == value and str(value) not in ("", "nan")


def mmbench_options(doc: dict, letters: str = "ABCDE") -> dict[str, str]:
    return {k: str(doc[k]) for k in letters if _given(doc.get(k))}


def _mmbench_prompt(doc: dict, title: str, instruction: str) -> str:
    """lmms-eval's prompt: hint, question and options joined by spaces (no "Hint:" label)."""
    options = "\n".join([title, *(f"{k}. {v}" for k, v in mmbench_options(doc).items())])
    query = f"{doc['question']} {options}"
    if _given(doc.get("hint")):
        query = f"{doc['hint']} {query}"
    return f"<image>{query}\n\n{instruction}"


def mmbench_doc_to_text(doc: dict) -> str:
    return _mmbench_prompt(doc, MMBENCH_OPTIONS, LETTER_INSTRUCTION)


def mmbench_cn_doc_to_text(doc: dict) -> str:
    """MMBench-CN: the same prompt with lmms-eval's Chinese options title and instruction."""
    return _mmbench_prompt(doc, MMBENCH_CN_OPTIONS, MMBENCH_CN_INSTRUCTION)


def mmbench_infer_option(response: str) -> str:
    """MMBench's ``can_infer_option`` (lmms-eval, VLMEvalKit): a lone letter A-E among the
    whitespace-separated tokens, bare or punctuated (``B.``, ``(B)``, ``:B`` ...). Its quirks are
    kept: a bare "A" in a response of more than 3 tokens is read as the article, so the bare
    pass gives up (and "(B) A dog" is A, since the bare "A" is found first)."""
    tokens = [t.strip() for t in response.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(prefix + c + suffix in tokens for c in "ABCDE")

    if count() == 1:
        for letter in "ABCDE":
            if "A" in tokens and len(tokens) > 3:
                break
            if letter in tokens:
                return letter
    for prefix, suffix in _PUNCTUATED:
        if count(prefix, suffix) == 1:
            return next(c for c in "ABCDE" if prefix + c + suffix in tokens)
    return ""


def mmbench_infer_text(response: str, options: dict[str, str]) -> str:
    """MMBench's ``can_infer_text``: the one option (A-D) whose text the response contains."""
    lower = response.lower()
    found = [k for k, v in options.items() if v.lower() in lower]
    return found[0] if len(found) == 1 else ""


def mmbench_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """One row (a question or one of its rotated copies): the option the response names, by
    MMBench's rule, else lmms-eval's priority extraction (the judge-free ``mmbench_en_dev_static``
    path; the reference asks GPT instead). Every metric gets the row; the aggregations do the
    circular evaluation."""
    response = results[0].strip()
    options = mmbench_options(doc, "ABCD")
    predicted = (mmbench_infer_option(response) or mmbench_infer_text(response, options)
                 or extract_letter(response, "".join(sorted(options))))
    row = {"index": int(doc["index"]), "correct": predicted == str(doc["answer"]).strip(),
           "l2": doc.get("L2-category") or doc.get("l2-category")}
    return {"circular": row, **dict.fromkeys(MMBENCH_L2, row)}


def mmbench_circular(rows: list[dict], l2: str | None = None) -> float:
    """CircularEval (MMBench): the dev split holds each question (index < 1e6) and copies with its
    options rotated (index + k * 1e6); a question counts only if every copy is answered right.
    The accuracy over the questions (of one L2 category, if given)."""
    copies: dict[int, list[bool]] = {}
    for row in rows:
        copies.setdefault(row["index"] % 1_000_000, []).append(row["correct"])
    questions = [r for r in rows if r["index"] < 1_000_000 and (l2 is None or r["l2"] == l2)]
    if not questions:
        return float("nan")
    return sum(all(copies[r["index"]]) for r in questions) / len(questions)


def _l2_aggregate(name: str):
    def aggregate(rows: list[dict]) -> float:
        return mmbench_circular(rows, MMBENCH_L2[name])

    aggregate.__name__ = f"mmbench_{name}"
    return aggregate


mmbench_coarse_perception = _l2_aggregate("coarse_perception")
mmbench_fine_grained_single = _l2_aggregate("fine_grained_single")
mmbench_fine_grained_cross = _l2_aggregate("fine_grained_cross")
mmbench_attribute_reasoning = _l2_aggregate("attribute_reasoning")
mmbench_relation_reasoning = _l2_aggregate("relation_reasoning")
mmbench_logic_reasoning = _l2_aggregate("logic_reasoning")


# ---------------------------------------------------------------- MMBench's GPT fallback (a judge protocol)

# MMBench's matching prompt (lmms-eval mmbench_evals.py ``build_prompt`` = VLMEvalKit's, with E
# where VLMEvalKit now says Z), verbatim.
MMBENCH_MATCH_PROMPT = (
    "You are an AI assistant who will help me to match an answer "
    "with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different "
    "from the answer, output E. "
    "Your should output a single uppercase character in A, B, C, D "
    "(if they are valid options), and E. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear "
    "B. rabbit C. cat D. dog\nAnswer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear "
    "B. rabbit C. cat D. dog\nAnswer: Spider\nYour output: E\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)


def mmbench_rule(response: str, doc: dict) -> str:
    """MMBench's ``can_infer``: the option (A-D) the response names by letter or by text, or ""."""
    return mmbench_infer_option(response) or mmbench_infer_text(response, mmbench_options(doc, "ABCD"))


def mmbench_match_messages(doc: dict, response: str, attempt: int) -> list[dict] | None:
    """The reference's GPT request for a response its rule cannot read (None: the rule reads it).
    The options as ``build_option_str`` lists them: up to the first missing one."""
    if mmbench_rule(response.strip(), doc):
        return None
    options = "There are several options: \n"
    for letter in "ABCD":
        if not _given(doc.get(letter)):
            break
        options += f"{letter}. {doc[letter]}\n"
    return [{"role": "user", "content": MMBENCH_MATCH_PROMPT.format(doc["question"], options, response.strip())}]


def mmbench_read_match(reply: str, doc: dict) -> str | None:
    """The judge's reply read by the same rule (None: no single option in it: ask again)."""
    return mmbench_rule(reply, doc) or None


def mmbench_judged_score(items: list[dict]) -> dict[str, float]:
    """CircularEval with the judge's option where the rule read none. After the reference's three
    tries without one, a random letter of A-E (the reference counts the option columns, which
    are always A-D; seeded here by the row's index, deterministic; the reference seeds once per
    run)."""
    import random

    rows = []
    for item in items:
        doc = item["doc"]
        if item["asked"]:
            predicted = item["judged"]
            if predicted is None:
                predicted = random.Random(int(doc["index"])).choice("ABCDE")
        else:
            predicted = mmbench_rule(item["response"].strip(), doc)
        rows.append({"index": int(doc["index"]), "correct": predicted == str(doc["answer"]).strip(),
                     "l2": doc.get("L2-category") or doc.get("l2-category")})
    return {"circular": mmbench_circular(rows), **{k: mmbench_circular(rows, v) for k, v in MMBENCH_L2.items()},
            "judged": sum(item["asked"] for item in items) / max(len(items), 1)}


MMBENCH_JUDGE = {"prompt": MMBENCH_MATCH_PROMPT, "max_new_tokens": 256, "tries": 3,
                 "request": mmbench_match_messages, "read": mmbench_read_match, "score": mmbench_judged_score}
