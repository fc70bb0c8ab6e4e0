"""Tables come from result files only: aggregation over seeds and the three renderings."""

import json

import pandas as pd
import pytest

from masters.tables import accuracy_table, seed_table, write_seed_table, write_table


def _result(path, label, acc):
    path.write_text(json.dumps({"model": label, "label": label, "accuracy": acc,
                                "mean_accuracy": sum(acc.values()) / len(acc)}))
    return path


def test_seed_table_mean_and_std(tmp_path):
    runs = [_result(tmp_path / f"s{i}.json", "masters", {"a": a, "b": b}) for i, (a, b) in enumerate([(50, 70), (60, 80), (70, 90)])]
    base = [_result(tmp_path / "base.json", "base", {"a": 40.0, "b": 20.0})]
    mean, std = seed_table({"base": base, "+Reward Feedback": runs})
    assert list(mean.index) == ["base", "+Reward Feedback"] and list(mean.columns) == ["a", "b", "Avg"]
    assert mean.loc["+Reward Feedback"].tolist() == [60.0, 80.0, 70.0]
    assert std.loc["+Reward Feedback", "a"] == pytest.approx(10.0) and std.loc["base"].eq(0).all()
    paths = write_seed_table({"base": base, "+Reward Feedback": runs}, tmp_path / "t1", caption="Table 1")
    csv = pd.read_csv(paths[0], index_col="model")
    assert list(csv.columns) == ["a", "b", "Avg", "a_std", "b_std", "Avg_std"]
    assert "60.0 ± 10.0" in paths[1].read_text() and "Table 1" in paths[1].read_text()
    assert "\\begin{tabular}" in paths[2].read_text()


def test_rows_must_share_benchmarks_and_have_results(tmp_path):
    a = _result(tmp_path / "a.json", "x", {"a": 1.0})
    b = _result(tmp_path / "b.json", "x", {"b": 1.0})
    with pytest.raises(ValueError, match="different benchmarks"):
        seed_table({"x": [a, b]})
    with pytest.raises(ValueError, match="no result files"):
        seed_table({"x": []})
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KeyError, match="not an evaluation summary"):
        accuracy_table([tmp_path / "bad.json"])


def test_write_table_renders_numbers(tmp_path):
    table = accuracy_table([_result(tmp_path / "l.json", "L", {"a": 99.25, "b": 100.0})])
    paths = write_table(table, tmp_path / "acc", caption="acc")
    assert pd.read_csv(paths[0], index_col="model").loc["L", "a"] == 99.2  # round-half-even of 99.25
    assert "| 99.2 " in paths[1].read_text() and "| 100.0 " in paths[1].read_text()
