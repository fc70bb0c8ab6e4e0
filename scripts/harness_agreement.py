#!/usr/bin/env python
"""How often does this repo's scoring of a benchmark agree with lmms-eval's own functions?

Every benchmark scorer of ``benchmarks/`` was written from lmms-eval's behaviour (read at one
commit), not copied. This script imports lmms-eval's own scoring functions and runs both on
the same items and responses: a corpus of response styles (bare and bracketed letters, answer
phrases, option texts, sentences, other languages, empty, numbers) against every answer letter,
and for MathVista the three answer types; and every benchmark's prompt for one item of its
schema. It prints, per benchmark, the share of (item, response) pairs on which the two agree, the
disagreements, and exits 1 on any disagreement that is not a documented deviation (``KNOWN``). Not part of CI: lmms-eval is not installed by the
project (its pins conflict), so it is loaded from a directory of its own:

    .venv/bin/python -m pip install --no-deps --target .lmms lmms-eval==0.7.3 loguru
    .venv/bin/python -m pip install --target .lmms levenshtein   # MathVista's nearest choice
    PYTHONPATH=.lmms .venv/bin/python scripts/harness_agreement.py [--show 5]

MathVista: lmms-eval asks an LLM for every response its rules do not settle; those pairs are
counted apart (``llm``), and compared on what the rules of both read.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mathvista  # noqa: E402
import mcq  # noqa: E402
import mmvet  # noqa: E402

OPTIONS = ["red", "green", "blue", "yellow"]
RESPONSES = [
    "A", "B", "C", "D", "E", "a", "b", "(A)", "(b)", "B.", "B)", "B:", "B,", " C ", "C\nbecause it is", "**B**",
    "Answer: B", "answer: c", "The answer is B.", "The answer is: D", "The correct answer is (C).",
    "Therefore, the final answer is A", "I choose A", "Option D", "I think A is wrong, B", "A B", "AB",
    "(B) A dog", "B. green", "green", "The colour is green.", "green and blue", "A cat", "none of them", "",
    "I'd say it's (D) yellow", "答案是B", "Blue, so C", "It must be D.", "C. blue\nD. yellow",
]


def _lmms():
    import os

    # lmms-eval builds its GPT judge client at import; openai >= 3 refuses an empty key. No request is
    # ever sent (the MathVista LLM call is replaced below), so any key will do.
    os.environ.setdefault("OPENAI_API_KEY", "unused-no-request-is-sent")
    try:
        from lmms_eval.api.metrics import exact_match_hf_evaluate
        from lmms_eval.tasks.ai2d import utils as ai2d
        from lmms_eval.tasks.blink import utils as blink
        from lmms_eval.tasks.realworldqa import utils as realworldqa
        from lmms_eval.tasks.mathvista.mathvista_evals import MathVistaEvaluator
        from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator
        from lmms_eval.tasks.mmmu import utils as mmmu
        from lmms_eval.tasks.mmstar import utils as mmstar
        from lmms_eval.tasks.seedbench import utils as seed
    except ImportError as err:
        raise SystemExit(f"lmms-eval is not importable ({err}); see this script's docstring") from err
    return blink, MathVistaEvaluator, MMBench_Evaluator, mmmu, mmstar, seed, (ai2d, exact_match_hf_evaluate), realworldqa


OPEN_ANSWERS = ["green", "3"]  # RealWorldQA's free answers (a word, a number)
OPEN_RESPONSES = ["3", "3.", " 3", "three", "Green.", "green", "GREEN", " green ", "It is green.", "3 cars"]


def mcq_pairs(open_answers: bool = False):
    for answer in "ABCD":
        for response in RESPONSES:
            yield answer, response
    for answer in OPEN_ANSWERS if open_answers else []:
        for response in RESPONSES + OPEN_RESPONSES:
            yield answer, response


def _ai2d_theirs(lmms_ai2d, answer: str, response: str) -> float:
    """lmms-eval's ai2d: its MultiChoiceRegexFilter (flexible-extract), then lm-eval's exact_match
    with ignore_case and ignore_punctuation, as ai2d.yaml configures them."""
    ai2d, exact_match = lmms_ai2d
    doc = {"question": "q", "options": OPTIONS, "answer": str("ABCD".index(answer))}
    keep = ai2d.MultiChoiceRegexFilter(regex_pattern=r"([A-Z])\.", group_select=0, ignore_case=True,
                                       ignore_punctuation=True)
    filtered = keep.apply([[response]], [doc])[0]
    target = ai2d.ai2d_doc_to_target(doc, "mcq")
    return float(exact_match([filtered], [target], ignore_case=True, ignore_punctuation=True)["exact_match"])


def compare_mcq(lmms) -> dict[str, list]:
    """For each multiple-choice benchmark: [(answer, response, ours, theirs)] where they differ, and a count."""
    blink, _, MMBench_Evaluator, mmmu, mmstar, seed, lmms_ai2d, realworldqa = lmms
    mmbench = MMBench_Evaluator()
    letters = "ABCD"
    options = dict(zip(letters, OPTIONS))
    index2ans = dict(options)
    scorers = {
        "mmstar": (lambda a, r: mcq.mmstar_process_results({"answer": a, "l2_category": "x"}, [r])["average"]["score"],
                   lambda a, r: mmstar.mmstar_process_results(
                       {"answer": a, "category": "c", "l2_category": "x", "index": 0}, [r])["average"]["score"]),
        "blink": (lambda a, r: mcq.blink_process_results({"answer": f"({a})", "choices": list(letters)}, [r])["acc"],
                  lambda a, r: float(blink.blink_process_results(
                      {"answer": f"({a})", "choices": [f"({c})" for c in letters], "idx": "0", "sub_task": "x"},
                      [r])["blink_acc"]["is_correct"])),
        "seedbench": (lambda a, r: mcq.seed_process_results({"answer": a, "question_type_id": 1}, [r])["seed_image"],
                      lambda a, r: _seed_score(seed.seed_process_result(
                          {"answer": a, "data_type": "image", "question_id": "0"}, [r])["seed_all"])),
        "mmbench (rule)": (lambda a, r: float((mcq.mmbench_infer_option(r) or mcq.mmbench_infer_text(r, options)) == a),
                           lambda a, r: float(mmbench.can_infer(r, dict(options)) == a)),
        "mmmu-pro (parsed)": (lambda a, r: float(mcq.mmmu_parse(r, OPTIONS, seed="0") == a),
                              lambda a, r: float(mmmu.parse_multi_choice_response(r, list(letters), index2ans) == a)),
    }
    scorers["ai2d"] = (
        lambda a, r: mcq.ai2d_process_results({"options": OPTIONS, "answer": str("ABCD".index(a))}, [r])["exact_match"],
        lambda a, r: _ai2d_theirs(lmms_ai2d, a, r))
    scorers["realworldqa"] = (lambda a, r: mcq.realworldqa_process_results({"answer": a}, [r])["exact_match"],
                              lambda a, r: realworldqa.realworldqa_process_results({"answer": a}, [r])["exact_match"])
    report = {}
    with _no_random_pick():
        for name, (ours, theirs) in scorers.items():
            report[name] = [(a, r, ours(a, r), theirs(a, r)) for a, r in mcq_pairs(name == "realworldqa")]
    return report


MMBENCH_DOCS = [  # 2, 3 and 4 options (the prompt lists them up to the first missing one)
    {"index": 0, "question": "Which animal is shown", "hint": None, "A": "a cat", "B": "a dog", "C": None, "D": None},
    {"index": 1, "question": "What colour", "hint": "h", "A": "red", "B": "green", "C": "blue", "D": None},
    {"index": 2, "question": "Which one?", "hint": None, "A": "1", "B": "2", "C": "3", "D": "4"},
]
UNREAD = ["it barks", "I think A is wrong, B", "none of them", "The answer is A", ""]


def compare_judge_prompts(lmms) -> list[tuple[str, str, str]]:
    """The judged benchmarks' LLM requests: [(what, ours, theirs)] for MMBench's matching prompt
    (every response its rule cannot read, on each item) and MathVista's extraction prompt."""
    _, MathVistaEvaluator, MMBench_Evaluator, *_ = lmms
    from lmms_eval.tasks.mathvista.mathvista_evals import DEMO_PROMPT

    mmbench, rows = MMBench_Evaluator(), []
    for doc in MMBENCH_DOCS:
        for response in UNREAD:
            if mcq.mmbench_rule(response, doc):
                continue
            theirs = mmbench.build_prompt(doc["question"], mmbench.build_option_str(mmbench.extract_options(doc)),
                                          response)
            rows.append((f"mmbench {doc['index']} {response!r}",
                         mcq.mmbench_match_messages(doc, response, 0)[0]["content"], theirs))
    evaluator = MathVistaEvaluator(quick_extract=False)
    for kind, doc in MATHVISTA_DOCS.items():
        for response in ("fourteen apples", "I am not sure", "[1, 2] or so"):
            ours = mathvista.extraction_messages(doc, response, 0)
            if ours is not None:
                rows.append((f"mathvista {kind} {response!r}", ours[0]["content"],
                             evaluator.create_test_prompt(DEMO_PROMPT, doc["query"], response)))
    return rows


MMBENCH_FIELDS = {"answer": "B", "category": "c", "L2-category": "l", "source": "s", "split": "dev"}
PROMPT_DOCS = {  # benchmark: (our doc_to_text, lmms-eval's task directory, its function, its YAML, one item)
    "ai2d": (mcq.ai2d_doc_to_text, "ai2d.utils", "ai2d_doc_to_text", "ai2d/ai2d.yaml",
             {"question": "Which part is the leaf?", "options": ["A", "stem", "root"], "answer": "0"}),
    "mmstar": (mcq.mmstar_doc_to_text, "mmstar.utils", "mmstar_doc_to_text", "mmstar/mmstar.yaml",
               {"question": "Is it red? Please answer yes or no. \nOptions: A: yes, B: no", "answer": "A"}),
    "seedbench": (mcq.seed_doc_to_text, "seedbench.utils", "seed_doc_to_text", None,
                  {"question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4"}),
    "seedbench_2_plus": (mcq.seed2plus_doc_to_text, "seedbench_2_plus.utils", "seed_doc_to_text",
                         "seedbench_2_plus/seedbench_2_plus.yaml",
                         {"question": "Which chart?", "choice_A": "a.png", "choice_B": "bar", "choice_C": "3",
                          "choice_D": "pie"}),
    "blink": (mcq.blink_doc_to_text, "blink.utils", "blink_doc_to_text", "blink/_default_template_yaml",
              {"prompt": "Which point is closer?\nSelect from the following choices.\n(A) A\n(B) B",
               "choices": ["(A)", "(B)"], "image_1": 1, "image_2": 2, "image_3": None, "image_4": None}),
    "realworldqa": (mcq.realworldqa_doc_to_text, "realworldqa.utils", "realworldqa_doc_to_text",
                    "realworldqa/realworldqa.yaml", {"question": " How many cars? Please answer directly. "}),
    "mmbench": (mcq.mmbench_doc_to_text, "mmbench.en_utils", "mmbench_doc_to_text",
                "mmbench/_default_template_mmbench_en_yaml", {**MMBENCH_DOCS[1], **MMBENCH_FIELDS}),
    "mmbench (no hint)": (mcq.mmbench_doc_to_text, "mmbench.en_utils", "mmbench_doc_to_text",
                          "mmbench/_default_template_mmbench_en_yaml", {**MMBENCH_DOCS[2], **MMBENCH_FIELDS}),
    "mmbench_cn": (mcq.mmbench_cn_doc_to_text, "mmbench.cn_utils", "mmbench_doc_to_text",
                   "mmbench/_default_template_mmbench_cn_yaml", {**MMBENCH_DOCS[1], **MMBENCH_FIELDS}),
    "mmmu_pro_standard": (mcq.mmmu_pro_standard_doc_to_text, "mmmu_pro.utils", "mmmu_pro_doc_to_text",
                          "mmmu_pro/mmmu_pro_standard.yaml",
                          {"question": "<image 1> What is shown?", "options": "['a', '<image 2>', 'c']"}),
    "mmmu_pro_vision": (mcq.mmmu_pro_vision_doc_to_text, "mmmu_pro.utils", "mmmu_pro_doc_to_text",
                        "mmmu_pro/mmmu_pro_vision.yaml", {"id": "v1", "answer": "A"}),
    "mmvet": (mmvet.doc_to_text, "mmvet.utils", "doc_to_text", "mmvet/mmvet.yaml",
              {"question": "What is the total price?"}),
}


def _lmms_kwargs(task_yaml: str | None) -> dict | None:
    """The ``default`` entry of a lmms-eval task YAML's ``lmms_eval_specific_kwargs`` (its
    ``include`` first); ``!function`` tags read as text."""
    import yaml
    import lmms_eval

    if task_yaml is None:
        return None
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    path = Path(lmms_eval.__file__).parent / "tasks" / task_yaml
    spec = yaml.load(path.read_text(), Loader=loader) or {}
    base = _lmms_kwargs(str(Path(task_yaml).parent / spec["include"])) if spec.get("include") else None
    return (spec.get("lmms_eval_specific_kwargs") or {}).get("default", base)


def compare_prompts() -> list[tuple[str, str, str]]:
    """Each benchmark's prompt for one item of its schema: [(benchmark, ours, theirs)]. Ours carries
    lm-eval's image placeholders (``<image>``) where the images go; lmms-eval sends the images
    apart (before the text) except where its text names them, so ours is compared without the
    leading placeholders."""
    import importlib
    import re

    rows = []
    for name, (ours, module, function, task_yaml, doc) in PROMPT_DOCS.items():
        theirs_fn = getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), function)
        kwargs = _lmms_kwargs(task_yaml)
        theirs = theirs_fn(doc) if task_yaml is None else theirs_fn(doc, kwargs)
        rows.append((name, re.sub(r"^(<image>)+", "", ours(doc)), theirs))
    return rows


@contextlib.contextmanager
def _no_random_pick():
    """MMMU's parsers pick a random option for an unparsable response (each with its own
    generator): make both pick "?" so that only what they parse is compared."""
    import random

    saved = random.Random.choice, random.choice
    random.Random.choice = lambda self, seq: "?"
    random.choice = lambda seq: "?"
    try:
        yield
    finally:
        random.Random.choice, random.choice = saved


def _seed_score(item: dict) -> float:
    return float(item["pred"].lower().strip() == item["answer"].lower().strip())


MATHVISTA_DOCS = {
    "multi_choice": {"question": "What fraction of the shape is blue?", "choices": ["3/11", "8/11", "6/11", "3/5"],
                     "unit": None, "precision": None, "answer": "8/11", "question_type": "multi_choice",
                     "answer_type": "text", "query": "q", "caption": "", "ocr": ""},
    "integer": {"question": "How many cups?", "choices": None, "unit": "g", "precision": None, "answer": "14",
                "question_type": "free_form", "answer_type": "integer", "query": "q", "caption": "", "ocr": ""},
    "float": {"question": "What fraction faces the camera?", "choices": None, "unit": "", "precision": 1.0,
              "answer": "0.6", "question_type": "free_form", "answer_type": "float", "query": "q", "caption": "",
              "ocr": ""},  # precision: a float, as the Hub's dataset holds it
}
MATHVISTA_RESPONSES = ["B", "(B)", "8/11", "8/12", "B. 8/11", "The answer is B", "14", "14.0", " 14", "1,4", "0.6",
                       "0.60", ".6", "0.58", "0.65", "6", "The answer is 14", "fourteen", "", "[1, 2]"]


def compare_mathvista(lmms) -> tuple[list, list, int]:
    """Prompts (per answer type) and scores: [(doc kind, response, ours, theirs)] compared where
    lmms-eval's rules settle the response, and how many it would send to its LLM."""
    _, MathVistaEvaluator, *_ = lmms
    evaluator = MathVistaEvaluator(quick_extract=False)
    sent = []
    evaluator.get_chat_response = lambda prompt, **_: sent.append(prompt) or "\x00LLM"
    prompts = []
    for kind, doc in MATHVISTA_DOCS.items():
        theirs = evaluator.create_one_query(doc, shot_type="format-prompt", shot_num=0)
        prompts.append((kind, mathvista.doc_to_text(doc).removeprefix("<image>"), theirs))
    rows, llm = [], 0
    for kind, doc in MATHVISTA_DOCS.items():
        for response in MATHVISTA_RESPONSES:
            extraction = evaluator.extract_answer(response, doc, quick_extract=False)
            if extraction == "\x00LLM":
                llm += 1
                continue
            normalized = evaluator.normalize_extracted_answer(extraction, doc["choices"], doc["question_type"],
                                                              doc["answer_type"], doc["precision"])
            theirs = float(evaluator.safe_equal(normalized, doc["answer"]))
            rows.append((kind, response, mathvista.process_results(doc, [response])["acc"], theirs))
    return prompts, rows, llm


# Deviations documented in README ("The paper's benchmarks"), on purpose.
KNOWN = {
    "mmmu-pro (parsed)": "known: this repo scores MMMU-Pro with the official mmmu-pro/evaluate.py rule, which takes"
                         " the last of several named letters; lmms-eval's MMMU parser another one",
    "mmbench_cn prompt": "known: lmms-eval 0.7.3's cn_utils reads the options title from the group's mmbench.yaml"
                         " (English) instead of mmbench_cn.yaml's 有如下几个选项： (which its earlier versions read);"
                         " this repo keeps the Chinese title",
    "mmmu_pro_standard prompt": "known: this repo sends the official MMMU-Pro prompt (mmmu-pro/infer: one newline"
                                " before the instruction, <image N> replaced by the image in place); lmms-eval adds a"
                                " blank line and sends the images first, their references left as text",
    "mmmu_pro_vision prompt": "known: this repo sends the official MMMU-Pro vision prompt (the 'Answer: $LETTER'"
                              " line its rule reads); lmms-eval only the instruction's first sentence",
    "mathvista float": "known: lmms-eval rounds with the dataset's float precision (1.0), a TypeError that makes"
                       " every float answer wrong; this repo uses int(precision)",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--show", type=int, default=8, help="disagreements to print per benchmark (default 8)")
    args = p.parse_args(argv)
    lmms = _lmms()
    import importlib.metadata

    import lmms_eval

    print(f"lmms-eval {importlib.metadata.version('lmms_eval')} from {Path(lmms_eval.__file__).parent}")
    unexplained = 0
    for name, rows in compare_mcq(lmms).items():
        differ = [row for row in rows if row[2] != row[3]]
        print(f"\n{name}: agree on {len(rows) - len(differ)} / {len(rows)} ({100 * (1 - len(differ) / len(rows)):.1f} %)"
              + (f"; {KNOWN[name]}" if name in KNOWN else ""))
        for answer, response, ours, theirs in differ[: args.show]:
            print(f"  answer {answer}  response {response!r}: ours {ours:g}, lmms-eval {theirs:g}")
        unexplained += bool(differ) and name not in KNOWN
    prompts, rows, llm = compare_mathvista(lmms)
    same = sum(ours == theirs for _, ours, theirs in prompts)
    print(f"\nmathvista prompts: {same} / {len(prompts)} identical")
    for kind, ours, theirs in prompts:
        if ours != theirs:
            print(f"  {kind}: ours {ours!r}\n  {' ' * len(kind)}  lmms {theirs!r}")
    differ = [row for row in rows if row[2] != row[3]]
    print(f"mathvista scores: agree on {len(rows) - len(differ)} / {len(rows)} settled by lmms-eval's rules"
          f" ({llm} more it sends to its LLM)")
    for kind, response, ours, theirs in differ[: args.show]:
        print(f"  {kind}  response {response!r}: ours {ours:g}, lmms-eval {theirs:g}")
    if any(kind == "float" for kind, *_ in differ):
        print(f"  {KNOWN['mathvista float']}")
    unexplained += same != len(prompts) or any(kind != "float" for kind, *_ in differ)
    judge = compare_judge_prompts(lmms)
    differ = [(what, ours, theirs) for what, ours, theirs in judge if ours != theirs]
    print(f"\njudge requests (MMBench matching, MathVista extraction): {len(judge) - len(differ)} / {len(judge)} identical")
    for what, ours, theirs in differ[: args.show]:
        print(f"  {what}:\n    ours {ours[-120:]!r}\n    lmms {theirs[-120:]!r}")
    unexplained += bool(differ)
    prompts = compare_prompts()
    differ = [(name, ours, theirs) for name, ours, theirs in prompts if ours != theirs]
    print(f"\nprompts: {len(prompts) - len(differ)} / {len(prompts)} identical")
    for name, ours, theirs in differ:
        print(f"  {name}{'; ' + KNOWN[name + ' prompt'] if name + ' prompt' in KNOWN else ''}:\n    ours {ours!r}\n"
              f"    lmms {theirs!r}")
        unexplained += name + " prompt" not in KNOWN
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
