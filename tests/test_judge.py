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
    res = llm_judge([("q", "a", "a"), ("q", "a", "b")], judge)
    assert [r.score for r in res] == [1, 0] and len(judge.calls) == 1
    assert llm_judge([], ScriptedJudge()) == []


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
