"""Accuracy reward: App. D prompts, the two-step LLM judge, the rule judge (METHOD.md §4)."""

from __future__ import annotations

import pytest

from masters.judge import (
    EVAL_SYSTEM_PROMPT,
    EVAL_USER_TEMPLATE,
    PARSE_PROMPT_SYSTEM,
    PARSE_PROMPT_USER_TEMPLATE,
    JudgeResult,
    llm_judge,
    parse_binary,
    parse_score,
    rule_score,
)


class ScriptedJudge:
    """Answers from a fixed list per call; records every call."""

    def __init__(self, *replies: list[str]):
        self.replies = list(replies)
        self.calls: list[list[list[dict]]] = []

    def generate(self, prompts, max_new_tokens):
        self.calls.append(prompts)
        out = self.replies.pop(0)
        assert len(out) == len(prompts)
        return out


def test_prompts_verbatim():
    assert EVAL_SYSTEM_PROMPT.startswith(
        "You are an evaluation assistant that gives accuracy scores compared with Ground Truth and "
        "Generated Text from AI.\nQuestion is in <question> </question> tag.\n"
    )
    assert "- If the Generated Text fully and correctly captures the core point \u2192 1\n" in EVAL_SYSTEM_PROMPT
    assert "- If it has empty response \u2192 0\n" in EVAL_SYSTEM_PROMPT
    assert EVAL_SYSTEM_PROMPT.endswith("- The evaluation score should be wrapped in <answer> </answer> tag.")
    user = EVAL_USER_TEMPLATE.format(question="Q?", ground_truth="GT", generated="GEN {x}")
    assert user.index("Q?") < user.index("GT") < user.index("GEN {x}")
    assert "<ground truth>\nGT\n</ground truth>" in user
    assert user.endswith("The evaluation score should be wrapped in <answer> </answer> tag.")
    assert "<overall_summary> and </overall_summary> tag" in PARSE_PROMPT_SYSTEM
    assert PARSE_PROMPT_SYSTEM.endswith("Your final output must include only the integer value.")
    assert PARSE_PROMPT_USER_TEMPLATE.format(summary="S").startswith("<overall_summary>\nS\n</overall_summary>\n")
    for text in (EVAL_SYSTEM_PROMPT, EVAL_USER_TEMPLATE, PARSE_PROMPT_SYSTEM, PARSE_PROMPT_USER_TEMPLATE):
        assert "&lt;" not in text and "\\_" not in text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Correct. <answer>1</answer>", 1),
        ("<answer> 0 </answer>", 0),
        ("<ANSWER>\n1\n</Answer>", 1),
        ("< answer >1< / answer >", 1),
        ("<answer>0</answer> on reflection <answer>1</answer>", 1),
        ("<answer>yes</answer>", None),
        ("<answer>0.5</answer>", None),
        ("<answer>10</answer>", None),
        ("score: 1", None),
        ("", None),
        ("<answer>1", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("1", 1), (" 0\n", 0), ("1.", 1), ("<answer>0</answer>", 0), ("The score is 1", None), ("2", None), ("", None)],
)
def test_parse_binary(text, expected):
    assert parse_binary(text) == expected


def test_llm_judge_two_step_protocol():
    items = [
        {"question": "What colour?", "ground_truth": "red", "generated": "red"},
        {"question": "How many?", "ground_truth": "3", "generated": "four"},
        ("Which shape?", "B", "circle"),
        {"question": "Q4", "ground_truth": "x", "generated": "y"},
    ]
    first = ["Matches. <answer> 1 </answer>", "The count is wrong, so 0.", "hmm", "<answer>0</answer>"]
    second = ["0", "I cannot tell"]
    judge = ScriptedJudge(first, second)
    res = llm_judge(items, judge, max_new_tokens=64)
    assert [r.score for r in res] == [1, 0, 0, 0]
    assert [r.parse_failed for r in res] == [False, False, True, False]
    assert len(judge.calls) == 2 and len(judge.calls[0]) == 4 and len(judge.calls[1]) == 2
    # first call: the evaluation prompt with the item's fields in order
    sys_msg, user_msg = judge.calls[0][1]
    assert sys_msg == {"role": "system", "content": EVAL_SYSTEM_PROMPT}
    assert user_msg["role"] == "user"
    assert user_msg["content"] == EVAL_USER_TEMPLATE.format(question="How many?", ground_truth="3", generated="four")
    # second call: the parsing prompt with the first output as the summary
    assert judge.calls[1][0][0]["content"] == PARSE_PROMPT_SYSTEM
    assert judge.calls[1][0][1]["content"] == PARSE_PROMPT_USER_TEMPLATE.format(summary="The count is wrong, so 0.")
    assert judge.calls[1][1][1]["content"] == PARSE_PROMPT_USER_TEMPLATE.format(summary="hmm")
    # raw outputs kept
    assert res[0] == JudgeResult(score=1, raw_eval=first[0], raw_parse=None, parse_failed=False)
    assert res[1].raw_eval == first[1] and res[1].raw_parse == "0"
    assert res[2].raw_outputs == ["hmm", "I cannot tell"]
    assert sum(r.parse_failed for r in res) == 1


def test_llm_judge_single_call_when_all_parse():
    judge = ScriptedJudge(["<answer>1</answer>", "<answer>0</answer>"])
    res = llm_judge([("q", "a", "a"), ("q", "a", "b")], judge, 8)
    assert [r.score for r in res] == [1, 0] and len(judge.calls) == 1
    assert llm_judge([], ScriptedJudge(), 8) == []


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("The Circle.", "circle", 1),
        ("a  red   square", "Red square", 1),
        ("blue", "red", 0),
        ("3", "3", 1),
        ("3.0", "3", 1),
        ("There are 3 apples.", "3", 1),
        ("There are 4 apples.", "3", 0),
        ("1,000", "1000", 1),
        ("0.1 + 0.2 = 0.30000000000000004", "0.3", 1),
        ("0.31", "0.3", 0),
        ("-2", "-2.0", 1),
        ("50%", "50", 1),
        ("B", "B", 1),
        ("(B)", "B", 1),
        ("b", "B", 1),
        ("B. square", "B", 1),
        ("B) square", "B", 1),
        ("The answer is B", "B", 1),
        ("The answer is B.", "(B)", 1),
        ("Answer: (C)", "C", 1),
        ("The answer is C", "B", 0),
        ("A", "B", 0),
        ("a square", "A", 0),
        ("", "A", 0),
        ("", "", 0),
    ],
)
def test_rule_score(pred, gt, expected):
    assert rule_score(pred, gt) == expected


def test_rule_score_with_options():
    opts = ["circle", "square", "triangle", "star"]
    assert rule_score("square", "B", opts) == 1
    assert rule_score("A square.", "B", opts) == 1
    assert rule_score("circle", "B", opts) == 0
    assert rule_score("B. square", "B", opts) == 1
    assert rule_score("B", "square", opts) == 1  # ground truth given as option text
    assert rule_score("C", "square", opts) == 0
    assert rule_score("square", "B", {"A": "circle", "B": "square"}) == 1


def test_judge_messages_items_and_replies_exactly():
    """Found by mutation testing: roles, the order of a 3-tuple's fields, the token budget, a
    second-step 1, and replies that are not strings."""
    from masters.judge import _item_fields, eval_messages, parse_messages

    assert parse_messages("s") == [{"role": "system", "content": PARSE_PROMPT_SYSTEM},
                                   {"role": "user", "content": PARSE_PROMPT_USER_TEMPLATE.format(summary="s")}]
    assert [m["role"] for m in eval_messages("q", "g", "x")] == ["system", "user"]
    assert _item_fields(("q", "g", "x")) == ("q", "g", "x") and _item_fields(["q", 2, None]) == ("q", "2", "None")
    for bad in ("abc", ("q", "g"), ["q", "g", "x", "y"]):
        with pytest.raises(ValueError, match="3-tuple"):
            _item_fields(bad)

    class Reply:  # a backend may return objects that render as text
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    budgets = []

    class Backend:
        def __init__(self, *replies):
            self.replies = list(replies)

        def generate(self, prompts, max_new_tokens):
            budgets.append(max_new_tokens)
            return [Reply(r) for r in self.replies.pop(0)]

    res = llm_judge([("q", "g", "x"), ("q", "g", "y")], Backend(["no tag", "<answer>0</answer>"], ["1"]), 17)
    assert budgets == [17, 17]
    assert [r.score for r in res] == [1, 0] and res[0].raw_outputs == ["no tag", "1"]
    assert all(isinstance(t, str) for r in res for t in r.raw_outputs)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("0.5", "1/2", 1), ("0.5", " -1 / 2 ", 0), ("-0.5", "-1/2", 1), ("2", "4/2", 1), ("1/2", "0.5", 1),
        ("anything", "1/0", 0),  # no number: never a division by zero
        ("0.5", ".5", 1), ("2.0", "$2", 1), ("2.0", "2 %", 1), ("3.0", "3..", 1),
        ("1000", "1,000", 1), ("there are 1,000 apples", "1000", 1),
        ("1.0000001", "1", 1), ("1.00001", "1", 0),  # relative tolerance 1e-6
        ("1e9999", "1e999", 0),  # non-finite numbers never match
        ("The answer is B and the choice is a", "B", 1),  # a lowercase "a" is an article, not option A
    ],
)
def test_rule_score_numbers_and_letters(pred, gt, expected):
    assert rule_score(pred, gt) == expected


def test_rule_score_empty_sides_and_many_options():
    assert rule_score(None, "XXXX") == 0 and rule_score("XXXX", None) == 0  # nothing never matches
    options = [f"option {j}" for j in range(30)]  # more options than letters: the first 26 get one
    assert rule_score("Z", "option 25", options) == 1 and rule_score("option 27", "Z", options) == 0


def test_judge_responses_rule_and_llm_over_a_responses_frame():
    import pandas as pd

    from masters.judge import judge_responses

    questions = pd.DataFrame({"id": ["q1", "q2"], "question": ["Which shape?", "How many?"],
                              "answer": ["B", "3"], "options": [["circle", "square"], None]}).set_index("id")
    responses = pd.DataFrame({"question_id": ["q2", "q1", "q1", "q2"],
                              "text": ["three? no, 3", "square", "circle", "4"], "extra": [1, 2, 3, 4]})
    ruled = judge_responses(responses, questions)
    assert ruled.r_acc.tolist() == [1.0, 1.0, 0.0, 0.0]  # "square" is option B by its text
    assert ruled.judge_raw.eq("").all() and not ruled.judge_parse_failed.any()
    assert ruled.extra.tolist() == [1, 2, 3, 4] and "r_acc" not in responses, "a copy, the input is untouched"
    no_options = judge_responses(responses, questions.drop(columns="options"))
    assert no_options.r_acc.tolist() == [1.0, 0.0, 0.0, 0.0]  # without options, "square" is not "B"

    seen = []

    class Chat:
        def __init__(self):
            self.calls = [["<answer>1</answer>", "<answer>0</answer>", "no tag", "<answer>1</answer>"], ["garbled"]]

        def generate(self, prompts, max_new_tokens):
            seen.append((prompts, max_new_tokens))
            return self.calls.pop(0)

    judged = judge_responses(responses, questions, Chat(), 33)
    assert judged.r_acc.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert judged.judge_parse_failed.tolist() == [False, False, True, False]
    assert judged.judge_raw.tolist()[2] == "no tag\n---\ngarbled" and judged.judge_raw.tolist()[0] == "<answer>1</answer>"
    assert [m for _, m in seen] == [33, 33] and "How many?" in str(seen[0][0][0]) and "three? no, 3" in str(seen[0][0][0])
    with pytest.raises(KeyError, match="responses: question ids not in the questions files: \\['q9'\\]"):
        judge_responses(pd.DataFrame({"question_id": ["q9"], "text": ["x"]}), questions)
    # a repeated (question, answer, text) is judged once and its verdict copied; the same text
    # for another question is judged on its own
    seen.clear()
    repeated = pd.DataFrame({"question_id": ["q1", "q1", "q2", "q1"], "text": ["square", "square", "square", "circle"]})
    chat = Chat()
    chat.calls = [["<answer>1</answer>", "<answer>0</answer>", "<answer>0</answer>"]]
    judged = judge_responses(repeated, questions, chat, 8)
    assert len(seen) == 1 and len(seen[0][0]) == 3 and judged.r_acc.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_chat_backend_builds_the_named_backend_with_the_settings(monkeypatch):
    import masters.generation
    from masters.judge import chat_backend

    built = []
    monkeypatch.setattr(masters.generation, "HFChatBackend",
                        lambda model, **kw: built.append(("hf", model, kw)) or "hf-backend")

    monkeypatch.setattr(masters.generation, "VLLMChatBackend",
                        lambda model, **kw: built.append(("vllm", model, kw)) or "vllm-backend")
    assert chat_backend("/judge", "hf", 12) == "hf-backend"
    assert built == [("hf", "/judge", {"batch_size": 12, "trust_remote_code": False})]
    chat_backend("/judge", "hf", 3, trust_remote_code=True)
    assert built[-1] == ("hf", "/judge", {"batch_size": 3, "trust_remote_code": True})
    assert chat_backend("/judge", "vllm", 12, gpus=2) == "vllm-backend"
    assert built[-1] == ("vllm", "/judge", {"batch_size": 12, "gpus": 2, "trust_remote_code": False})
    chat_backend("/judge", "hf", 2, device="cuda", dtype="bfloat16")  # the placement reaches the model
    assert built[-1] == ("hf", "/judge", {"batch_size": 2, "trust_remote_code": False, "device": "cuda",
                                          "dtype": "bfloat16"})
    monkeypatch.setattr(masters.generation, "OpenAIChatBackend",
                        lambda model, **kw: built.append(("openai", model, kw)) or "openai-backend")
    endpoint = {"base_url": "http://judge:8000/v1", "api_key_env": None, "workers": 4}
    assert chat_backend("gpt-4o", "openai", 8, endpoint=endpoint) == "openai-backend"
    assert built[-1] == ("openai", "gpt-4o", endpoint)
    chat_backend("gpt-4o", "openai", 8)  # no endpoint: the backend's defaults (the OpenAI API)
    assert built[-1] == ("openai", "gpt-4o", {})


def test_judge_report_counts_parse_failures_and_agreement_per_judge_and_source(tmp_path):
    import pandas as pd

    from masters.judge_report import judge_report, write_judge_report

    def judged(name, texts, acc, failed=None):
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"text": texts, "r_acc": acc, "judge_parse_failed": failed or [False] * len(texts)}).to_parquet(path)
        return str(path)

    pairs = [{"judge": "llm-J", "source": "teacher", "llm": judged("t_llm", ["a", "b", "c", "d"], [1, 1, 0, 0]),
              "rule": judged("t_rule", ["a", "b", "c", "d"], [1, 0, 1, 0])},
             {"judge": "llm-J", "source": "student", "llm": judged("s_llm", ["x", "y"], [0, 0], [True, False]),
              "rule": judged("s_rule", ["x", "y"], [0, 1])}]
    report = judge_report({"pairs": pairs}).set_index(["judge", "source"])
    teacher, student, every = (report.loc[("llm-J", s)] for s in ("teacher", "student", "all"))
    assert (teacher.responses, teacher.agree_pct, teacher.llm_1_rule_0_pct, teacher.llm_0_rule_1_pct) == (4, 50, 25, 25)
    assert (student.parse_failed_pct, student.agree_pct, student.r_acc_llm, student.r_acc_rule) == (50, 50, 0, 0.5)
    assert (every.responses, every.agree_pct, every.parse_failed_pct) == (6, 50, pytest.approx(100 / 6))
    written = write_judge_report({"pairs": pairs}, tmp_path / "judges")
    assert pd.read_csv(written[0]).shape == (3, 9) and "llm-J" in written[1].read_text()
    other = judged("other", ["a", "b", "c", "e"], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="judge different responses"):
        judge_report({"pairs": [{**pairs[0], "rule": other}]})
    assert "no LLM judge" in write_judge_report({"pairs": []}, tmp_path / "none")[1].read_text()


def test_world_judge_data_is_the_app_d_prompt_scored_by_the_rule_judge():
    """The world judge's SFT data: App. D's prompt verbatim, the rule judge's score, a reply that
    parses; right and wrong candidates in the same surface forms (no shortcut but the content)."""
    import pandas as pd

    from masters.judge import EVAL_SYSTEM_PROMPT, parse_score
    from masters.world import vqa
    from masters.world.judge_data import judge_examples

    items = pd.DataFrame([*vqa.generate("colour", "train", 20, seed=0, image_size=28),
                          *vqa.generate("shape", "train", 20, seed=0, image_size=28)])
    ex = judge_examples(items, 400, seed=3)
    assert ex.equals(judge_examples(items, 400, seed=3)) and not ex.equals(judge_examples(items, 400, seed=4))
    assert all(m[0]["content"] == EVAL_SYSTEM_PROMPT for m in ex.messages)
    generated = [m[1]["content"].split("<generated text>\n")[1].split("\n</generated text>")[0] for m in ex.messages]
    truth = [m[1]["content"].split("<ground truth>\n")[1].split("\n</ground truth>")[0] for m in ex.messages]
    by_truth = items.drop_duplicates("answer").set_index("answer")
    assert [parse_score(r) for r in ex.reply] == ex.score.tolist()
    assert ex.score.tolist() == [rule_score(g, t, list(by_truth.loc[t, "options"]) if by_truth.loc[t, "task"] == "shape"
                                            else None) for g, t in zip(generated, truth)]
    assert 0.35 < ex.score.mean() < 0.65
    capitalized = pd.Series([g[:1].isupper() and g.endswith(".") and " " not in g for g in generated])
    assert capitalized.any() and abs(ex.score[capitalized].mean() - ex.score[~capitalized].mean()) < 0.25
