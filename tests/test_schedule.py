"""The progressive schedule (METHOD.md §2, Eq. 3)."""

from __future__ import annotations

import math

import pytest

from masters.schedule import TeacherStage, plan_stages, ratios, split_iters, stage_iters, stage_of


def _no_negative_zero(rs):
    return all(math.copysign(1.0, r) > 0 for r in rs)


def test_ratios_paper_grid():
    assert ratios(0.2, 0.05) == [0.2, 0.15, 0.1, 0.05, 0.0]
    assert ratios(0.4, 0.1) == [0.4, 0.3, 0.2, 0.1, 0.0]


def test_ratios_float_rounding_exact():
    rs = ratios(0.3, 0.1)
    assert rs == [0.3, 0.2, 0.1, 0.0]
    assert rs[-1] == 0.0 and _no_negative_zero(rs)
    for r_max, step in [(0.3, 0.1), (0.7, 0.1), (0.9, 0.3), (0.6, 0.2), (0.15, 0.05), (0.2, 0.2)]:
        rs = ratios(r_max, step)
        assert rs[0] == r_max and rs[-1] == 0.0
        assert all(r >= 0.0 for r in rs) and _no_negative_zero(rs)
        assert len(rs) == round(r_max / step) + 1
        assert all(round(r, 6) == r for r in rs)
        assert rs == sorted(rs, reverse=True)


def test_ratios_zero_is_one_stage():
    assert ratios(0.0, 0.05) == [0.0]
    assert ratios(0, None) == [0.0]
    assert _no_negative_zero(ratios(0.0, 0.1))


@pytest.mark.parametrize(
    "r_max, step, word",
    [(-0.1, 0.05, "r_max"), (1.0, 0.1, "r_max"), (0.2, 0.0, "step"), (0.2, -0.05, "step"),
     (0.2, 0.3, "step"), (0.2, 0.03, "multiple"), (0.2, None, "step")],
)
def test_ratios_errors(r_max, step, word):
    with pytest.raises(ValueError, match=word):
        ratios(r_max, step)


def test_stage_of_covers_all_stages_in_order():
    for num_iters in (5, 7, 10, 13, 100):
        ks = [stage_of(i, num_iters, 0.2, 0.05) for i in range(num_iters)]
        assert ks == sorted(ks)
        assert set(ks) == set(range(5))
        assert ks[0] == 0 and ks[-1] == 4  # the clamp: i = I-1 is the last stage
        assert [ks.count(k) for k in range(5)] == stage_iters(num_iters, 0.2, 0.05)
    assert stage_of(99, 100, 0.2, 0.05) == 4
    assert [stage_of(i, 10, 0.2, 0.05) for i in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert stage_of(3, 4, 0.0, None) == 0


def test_stage_of_errors():
    with pytest.raises(ValueError):
        stage_of(10, 10, 0.2, 0.05)
    with pytest.raises(ValueError):
        stage_of(-1, 10, 0.2, 0.05)
    with pytest.raises(ValueError):
        stage_of(0, 0, 0.2, 0.05)


def test_split_iters_sums_exactly():
    assert split_iters([1, 1], 11) == [6, 5]
    assert split_iters([1, 2], 10) == [3, 7]
    assert split_iters([1, 1, 1], 100) == [34, 33, 33]
    assert split_iters([0.3, 0.7], 7) == [2, 5]
    for n in range(1, 40):
        assert sum(split_iters([1, 2, 3], n)) == n
    with pytest.raises(ValueError):
        split_iters([1, 0], 10)


def test_plan_stages_mid_then_large():
    plan = [{"teacher": "M", "r_max": 0.2, "step": 0.05, "share": 1},
            {"teacher": "L", "r_max": 0.2, "step": 0.05}]
    stages = plan_stages(plan, 22)
    assert [s.teacher for s in stages] == ["M"] * 5 + ["L"] * 5
    assert [s.ratio for s in stages] == [0.2, 0.15, 0.1, 0.05, 0.0] * 2
    assert [s.stage for s in stages] == list(range(5)) * 2
    assert sum(s.iters for s in stages) == 22
    assert sum(s.iters for s in stages if s.teacher == "M") == 11
    assert stages[0] == TeacherStage("M", 0.2, 0, 3)
    assert [s.iters for s in stages] == [3, 2, 2, 2, 2] * 2
    assert all(s.iters > 0 for s in stages)


def test_plan_stages_shares_and_r_max_zero():
    stages = plan_stages([{"teacher": "M", "r_max": 0.0, "share": 1},
                          {"teacher": "L", "r_max": 0.0, "share": 3}], 100)
    assert stages == [TeacherStage("M", 0.0, 0, 25), TeacherStage("L", 0.0, 0, 75)]
    single = plan_stages([{"teacher": "L", "r_max": 0.4, "step": 0.1}], 1000)
    assert [s.iters for s in single] == [200] * 5


def test_plan_stages_errors():
    with pytest.raises(ValueError, match="0 iterations"):
        plan_stages([{"teacher": "L", "r_max": 0.2, "step": 0.05}], 4)
    with pytest.raises(ValueError):
        plan_stages([], 10)
    with pytest.raises(ValueError):
        plan_stages([{"teacher": "L"}], 10)
    with pytest.raises(ValueError):
        plan_stages([{"teacher": "L", "r_max": 0.2, "step": 0.05}], 0)


def test_iteration_counts_at_their_boundaries():
    """Found by mutation testing: the smallest valid counts, and bools, floats or NaN rejected."""
    assert stage_of(0, 1, 0.2, 0.05) == 0  # one iteration is a valid run
    assert stage_iters(0, 0.2, 0.05) == [0] * 5 and stage_iters(1, 0.2, 0.05) == [1, 0, 0, 0, 0]
    assert plan_stages([{"teacher": "L", "r_max": 0.0}], 1) == [TeacherStage("L", 0.0, 0, 1)]
    # a stage of exactly one iteration is allowed (only 0 is an error)
    assert [s.iters for s in plan_stages([{"teacher": "L", "r_max": 0.1, "step": 0.1}], 2)] == [1, 1]
    for bad in (True, 2.5):
        with pytest.raises(ValueError, match="num_iters"):
            stage_of(0, bad, 0.2, 0.05)
        with pytest.raises(ValueError, match="num_iters"):
            stage_iters(bad, 0.2, 0.05)
        with pytest.raises(ValueError, match="num_iters"):
            plan_stages([{"teacher": "L", "r_max": 0.0}], bad)
    with pytest.raises(ValueError, match="num_iters"):
        stage_iters(-1, 0.2, 0.05)
    with pytest.raises(ValueError, match="iteration i"):
        stage_of(True, 3, 0.2, 0.05)
    with pytest.raises(ValueError, match="iteration i"):
        stage_of(0.5, 3, 0.2, 0.05)


def test_split_iters_remainders_and_bad_shares():
    # remainders 2/3 and 1/3: the larger remainder gets the spare iteration
    assert split_iters([1, 2], 2) == [1, 1]
    assert split_iters([2, 1], 2) == [1, 1] and split_iters([1, 5], 3) == [1, 2]  # tie: the earlier entry
    for bad in (True, "1", float("inf"), float("nan"), -1):
        with pytest.raises(ValueError, match="positive number"):
            split_iters([1, bad], 10)
    with pytest.raises(ValueError, match="teacher"):
        plan_stages([{"r_max": 0.1, "step": 0.1}], 10)
    with pytest.raises(ValueError, match="r_max"):
        plan_stages(["L"], 10)


@pytest.mark.parametrize(
    "r_max, step, message",
    [(float("nan"), 0.1, "r_max must be a finite number"), ("0.2", 0.1, "r_max must be a finite number"),
     (True, 0.1, "r_max must be a finite number"), (0.5, float("inf"), "step must be a finite number"),
     (0.5, "0.1", "step must be a finite number"), (0.5, True, "step must be a finite number"),
     (0.2, 0.2 + 1e-6, "multiple of step")],  # within the tolerance of r_max: the multiple check decides
)
def test_ratios_reject_non_numbers_with_the_right_message(r_max, step, message):
    with pytest.raises(ValueError, match=message):
        ratios(r_max, step)
