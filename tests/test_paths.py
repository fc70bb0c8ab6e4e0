"""masters.paths: every output path defined once; built paths parse back to their values."""

import re

import pytest

from masters import paths

NAMES = ["S", "my_S", "Qwen2.5-VL-3B-Instruct", "a+b", "x.y_z-1", "InternVL3_5-8B-HF"]


@pytest.mark.parametrize("name", NAMES)
def test_every_schema_name_round_trips_through_every_pattern(name):
    values = {"model": name, "student": name, "teacher": name, "experiment": name, "benchmark": name,
              "table": name, "figure": name, "task": name, "dataset": name, "split": "test", "ratio": "0.175", "source": "teacher",
              "n": 4, "seed": 2, "part": "3of5", "judge": f"llm-{name}", "data": "t4s2", "distill": "raw",
              "use": "acc", "alpha": paths.alpha_str(0.25), "checkpoint": "stage3",
              "run": paths.run("checkpoint", student=name, experiment=name, seed=1, checkpoint="final")}
    for kind, template in paths.PATTERNS.items():
        needed = {k: values[k] for k in paths.wildcards_of(template)}
        built = paths.path("res", kind, **needed)
        assert paths.parse("res", kind, built) == {k: str(v) for k, v in needed.items()}, kind
    for kind in paths.RUNS:
        needed = {k: values[k] for k in paths.wildcards_of(paths.RUNS[kind])}
        assert paths.parse_run(paths.run(kind, **needed)) == (kind, {k: str(v) for k, v in needed.items()})


def test_a_value_its_wildcard_refuses_is_an_error_not_a_path():
    with pytest.raises(paths.PathError, match="model='a/b'"):
        paths.path("res", "masked", model="a/b", ratio="0.10")
    with pytest.raises(paths.PathError, match="ratio='0.1'"):
        paths.path("res", "masked", model="L", ratio="0.1")  # masters.schedule.ratio_str gives 0.10
    with pytest.raises(paths.PathError, match="needs exactly"):
        paths.path("res", "masked", model="L")
    with pytest.raises(paths.PathError, match="not a rewards path"):
        paths.parse("res", "rewards", "res/rewards/S/L/r0.10/t4s4_s0_all/rule_normalized_both_a1.0.parquet")


def test_alpha_segment_reads_back_as_the_same_float():
    for alpha in (0.0, 1.0, 0.25, 1e-5, 1234567.0, 0.1 + 0.2):
        text = paths.alpha_str(alpha)
        assert re.fullmatch(paths.WILDCARDS["alpha"], text) and float(text) == alpha


def test_data_key_round_trips():
    assert paths.parse_data_key(paths.data_key(True, 4, 4)) is None
    assert paths.parse_data_key(paths.data_key(False, 8, 2)) == (8, 2)
    with pytest.raises(paths.PathError):
        paths.parse_data_key("t4")


def test_logs_and_benchmarks_carry_the_outputs_wildcards():
    for kind, template in paths.PATTERNS.items():
        assert set(paths.wildcards_of(paths.log("res", kind))) == set(paths.wildcards_of(template))
        assert paths.log("res", kind).startswith("res/logs/") and paths.benchmark("res", kind).endswith(".tsv")
    assert paths.pattern("res", "evaluation", benchmark="tiny_x") == "res/eval/{run}/tiny_x.json"
