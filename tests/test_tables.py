"""Tables come from result files only: aggregation over seeds and the three renderings."""

import json

import numpy as np
import pandas as pd
import pytest

from masters.tables import accuracy_table, benchmark_results, seed_table, write_seed_table, write_table


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


def test_paper_table_means_stds_literature_and_empty_slot(tmp_path):
    from masters.tables import write_paper_table

    def result(bench, value, seed):
        path = tmp_path / f"{bench}_{seed}_{value}.json"
        path.write_text(json.dumps({"model": "m", "accuracy": {bench: value}, "mean_accuracy": value}))
        return str(path)

    (tmp_path / "lit.csv").write_text("model,a,b\nBigVLM,80,90\nHalf,70,\n")
    spec = {"benchmarks": ["a", "b"], "literature": str(tmp_path / "lit.csv"), "rows": [
        {"model": "S", "label": "base", "results": [[result("a", 10, 0), result("b", 20, 0)]]},
        {"model": "S", "label": "+RF", "columns": {"Mid": "+"},
         "results": [[result("a", 30, 0), result("b", 40, 0)], [result("a", 50, 1), result("b", 40, 1)]]}]}
    write_paper_table(spec, tmp_path / "t", "caption (accuracy %, mean ± std)")
    table = pd.read_csv(tmp_path / "t.csv").set_index("row")
    assert list(table.index) == ["base", "+RF", "reported", "reported"]
    assert table.loc["+RF", "a"] == 40 and table.loc["+RF", "a_std"] == pytest.approx(14.142, abs=1e-3)
    assert table.loc["+RF", "Avg"] == 40 and table.loc["base", "Avg"] == 15 and table.loc["base", "Avg_std"] == 0
    assert table.loc["+RF", "Mid"] == "+"
    md = (tmp_path / "t.md").read_text()
    assert "40.0 ± 14.1" in md and "15.0 ±" not in md  # one seed: the mean alone
    tex = (tmp_path / "t.tex").read_text()
    assert "40.0 $\\pm$ 14.1" in tex and "±" not in tex and "(accuracy \\%, mean $\\pm$ std)" in tex
    reported = table[table.index == "reported"].set_index("model")
    assert reported.loc["BigVLM", "Avg"] == 85 and pd.isna(reported.loc["Half", "Avg"])  # not all reported
    write_paper_table({"benchmarks": ["a"], "rows": []}, tmp_path / "empty", "later")
    assert pd.read_csv(tmp_path / "empty.csv").empty and "later" in (tmp_path / "empty.md").read_text()


def test_latex_escapes_headers_cells_and_caption(tmp_path):
    from masters.tables import _write

    cells = pd.DataFrame({"tiny_colour": ["40.0 ± 1.0"]}, index=pd.Index(["a_b"], name="row"))
    tex = _write(cells, cells, tmp_path / "t", "acc % & more")[2].read_text()
    assert "tiny\\_colour" in tex and "a\\_b" in tex and "40.0 $\\pm$ 1.0" in tex
    assert "\\caption{acc \\% \\& more}" in tex


def test_avg_std_is_the_std_over_seeds_of_each_seeds_avg(tmp_path):
    """Avg of a seed = mean over benchmarks of that seed; its std is taken across seeds. With the
    benchmarks trading places between seeds, every seed's Avg is 20: std 0, while the mean of the
    per-benchmark stds (or the root of the mean variance) would be 14.1."""
    from masters.tables import paper_table

    def result(name, acc):
        path = _result(tmp_path / f"{name}.json", "m", acc)
        return [str(path)]

    seeds = [result("s0", {"a": 10.0, "b": 30.0}), result("s1", {"a": 30.0, "b": 10.0}),
             result("s2", {"a": 15.0, "b": 25.0})]
    mean, std = seed_table({"row": [p for files in seeds for p in files]})
    assert std.loc["row", "a"] == pytest.approx(10.408, abs=1e-3) and std.loc["row", "Avg"] == 0
    mean, std, _ = paper_table({"benchmarks": ["a", "b"], "rows": [
        {"model": "S", "label": "row", "results": seeds}]})
    assert mean.loc[("S", "row"), "Avg"] == 20 and std.loc[("S", "row"), "Avg"] == 0
    assert std.loc[("S", "row"), "b"] == pytest.approx(10.408, abs=1e-3)
    uneven = [result("u0", {"a": 10.0, "b": 30.0}), result("u1", {"a": 40.0, "b": 30.0})]
    _, std, _ = paper_table({"benchmarks": ["a", "b"], "rows": [{"model": "S", "label": "r", "results": uneven}]})
    assert std.loc[("S", "r"), "Avg"] == pytest.approx(np.std([20.0, 35.0], ddof=1))


def test_accuracy_table_and_rendering_exactly(tmp_path):
    """Found by mutation testing: the label fallback, the Avg arithmetic and each rendering, byte for byte."""
    def summary(name, acc, label=None, model="ckpt/x"):
        data = {"model": model, "accuracy": acc, "mean_accuracy": -1}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**data, "label": label} if label else data))
        return path

    table = accuracy_table([summary("a", {"a": 10.0}, "L"), summary("b", {"b": 20.0, "c": 60.0}, "L"),
                            summary("c", {"a": 1.0, "b": 2.0, "c": 3.0}, model="results/S")])
    assert table.index.name == "model" and list(table.index) == ["L", "results/S"]
    assert table.loc["L"].tolist() == [10.0, 20.0, 60.0, 30.0] and table.loc["results/S", "Avg"] == 2.0
    csv, md, tex = write_table(table, tmp_path / "new/dir/t")  # parents created
    assert csv.read_text() == "model,a,b,c,Avg\nL,10.0,20.0,60.0,30.0\nresults/S,1.0,2.0,3.0,2.0\n"
    assert md.read_text() == ("|     model |    a |    b |    c |   Avg |\n|----------:|-----:|-----:|-----:|------:|\n"
                              "|         L | 10.0 | 20.0 | 60.0 |  30.0 |\n| results/S |  1.0 |  2.0 |  3.0 |   2.0 |\n")
    assert tex.read_text().startswith("\\begin{tabular}{lllll}\n") and tex.read_text().endswith("\\end{tabular}\n\n")
    assert "L & 10.0 & 20.0 & 60.0 & 30.0 \\\\\n" in tex.read_text() and "caption" not in tex.read_text()
    runs = [summary(f"s{i}", {"a": a, "b": 50.0}, "m") for i, a in enumerate([12.34567, 13.0])]
    csv, md, _ = write_seed_table({"m": runs}, tmp_path / "s")  # two seeds: a std; 3 decimals in the csv
    assert csv.read_text() == "model,a,b,Avg,a_std,b_std,Avg_std\nm,12.673,50.0,-1.0,0.463,0.0,0.0\n"
    assert md.read_text().splitlines()[2] == "|       m | 12.7 ± 0.5 | 50.0 ± 0.0 | -1.0 ± 0.0 |"


def test_paper_table_exact_files_average_only_and_missing_cells(tmp_path):
    from masters.tables import paper_table, write_paper_table

    def files(name, acc):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": "m", "accuracy": acc, "mean_accuracy": 0}))
        return [str(path)]

    (tmp_path / "lit.csv").write_text("model,a,b\nBig,80,-\n")
    rows = [{"model": "S", "label": "base", "results": [files("b0", {"a": 10.0, "b": 20.0})]},
            {"model": "S", "label": "+RF", "columns": {"T": "L"},
             "results": [files("r0", {"a": 30.0, "b": 41.23456}), files("r1", {"a": 50.0, "b": 40.0})]}]
    spec = {"benchmarks": ["a", "b"], "literature": str(tmp_path / "lit.csv"), "rows": rows}
    csv, md, tex, _ = write_paper_table(spec, tmp_path / "t")
    assert csv.read_text() == ("model,row,T,a,b,Avg,a_std,b_std,Avg_std\nS,base,,10.0,20.0,15.0,0.0,0.0,0.0\n"
                               "S,+RF,L,40.0,40.617,40.309,14.142,0.873,6.635\nBig,reported,,80.0,,,,,\n")
    assert md.read_text() == (
        "|   model |      row |   T |           a |          b |        Avg |\n"
        "|--------:|---------:|----:|------------:|-----------:|-----------:|\n"
        "|       S |     base |     |        10.0 |       20.0 |       15.0 |\n"
        "|       S |      +RF |   L | 40.0 ± 14.1 | 40.6 ± 0.9 | 40.3 ± 6.6 |\n"
        "|     Big | reported |     |        80.0 |            |            |\n")
    assert "S & +RF & L & 40.0 $\\pm$ 14.1 & 40.6 $\\pm$ 0.9 & 40.3 $\\pm$ 6.6 \\\\" in tex.read_text().splitlines()
    with pytest.raises(ValueError, match="table row 'x' has no result files"):
        paper_table({"benchmarks": ["a"], "rows": [{"model": "S", "label": "x", "results": []}]})
    (tmp_path / "nomodel.csv").write_text("name,a\nBig,1\n")
    with pytest.raises(KeyError, match="nomodel.csv: the literature file needs a `model` column"):
        paper_table({"benchmarks": ["a"], "literature": str(tmp_path / "nomodel.csv"), "rows": []})
    mean, std, extra = paper_table({**spec, "average": True})
    assert list(mean.columns) == ["Avg"] and list(std.columns) == ["Avg"] and list(extra.columns) == ["T"]
    assert mean["Avg"].tolist()[:2] == [15.0, pytest.approx(40.30864)] and pd.isna(mean["Avg"].iloc[2])
    assert mean.index.names == ["model", "row"] and mean.dtypes.eq(float).all() and std.dtypes.eq(float).all()
    gap = {"benchmarks": ["a", "b"], "rows": [{"model": "S", "label": "x", "results": [
        files("g0", {"a": 1.0, "b": 2.0}), files("g1", {"a": 1.0})]}]}
    with pytest.raises(KeyError, match=r"'x'.*\['b'\]"):  # one seed lacks b
        paper_table(gap)
    empty_mean, empty_std, _ = paper_table({"benchmarks": ["a"]})
    assert empty_mean.empty and empty_mean.index.names == ["model", "row"] and list(empty_std.columns) == ["a", "Avg"]
    csv, md, _, categories = write_paper_table({"benchmarks": ["a"]}, tmp_path / "e", "Table 9")
    assert csv.read_text() == "model,row,a,Avg,a_std,Avg_std\n"
    assert md.read_text() == "Table 9\n\n|   model |   row |   a |   Avg |\n|---------|-------|-----|-------|\n"
    assert categories.read_text() == "model,row,benchmark,metric,mean,std,seeds\n"  # a slot filled later


def test_the_categories_of_a_table_are_every_per_category_score_over_seeds(tmp_path):
    """tables/<name>.categories.csv: each measured row's per-benchmark `metrics` (MMBench's L2
    categories, ...), mean and std over its seeds; a category one seed lacks is averaged over the
    others; benchmarks outside the table, summaries without metrics and reported rows give none."""
    from masters.tables import write_paper_table

    def summary(name, benchmark, metrics):
        path = tmp_path / f"{name}.json"
        record = {"model": "m", "accuracy": {benchmark: 1.0}, "mean_accuracy": 1.0}
        if metrics is not None:
            record |= {"benchmark": benchmark, "metrics": metrics}
        path.write_text(json.dumps(record))
        return str(path)

    (tmp_path / "lit.csv").write_text("model,mmb\nBig,80\n")
    spec = {"benchmarks": ["mmb", "x"], "literature": str(tmp_path / "lit.csv"), "rows": [
        {"model": "S", "label": "+RF", "results": [
            [summary("a0", "mmb", {"circular": 40.0, "logic": 20.0, "coarse": 60.0}), summary("x0", "x", None),
             summary("o0", "other", {"acc": 1.0})],
            [summary("a1", "mmb", {"circular": 50.0, "logic": None, "coarse": 70.0}), summary("x1", "x", None)]]}]}
    (tmp_path / "x1.json").write_text(json.dumps({"model": "m", "accuracy": {"x": 1.0}, "mean_accuracy": 1.0,
                                                  "benchmark": "x"}))  # a summary written before `metrics` existed
    (tmp_path / "x0.json").write_text(json.dumps({"model": "m", "accuracy": {"x": 1.0}, "mean_accuracy": 1.0,
                                                  "benchmark": "x", "metrics": {"acc": 10.0}}))  # only seed 0 gives x's
    *_, categories = write_paper_table(spec, tmp_path / "t")
    assert categories == tmp_path / "t.categories.csv"
    table = pd.read_csv(categories)
    assert table[["benchmark", "metric", "seeds"]].values.tolist() == [
        ["mmb", "circular", 2], ["mmb", "logic", 1], ["mmb", "coarse", 2], ["x", "acc", 1]]
    assert table["mean"].tolist() == [45.0, 20.0, 65.0, 10.0] and (table.model + table.row).eq("S+RF").all()
    assert table["std"].iloc[0] == 7.071 and pd.isna(table["std"].iloc[1])


def test_evaluation_summaries_are_written_in_the_format_the_tables_read(tmp_path):
    from masters.tables import load_result, write_results

    summary = {"model": "/ckpt", "accuracy": {"a": 50.0, "b": 100.0}, "n": {"a": 4, "b": 2},
               "metrics": {"a": {"acc": 50.0, "geometry/acc": 25.0}}}  # b: a summary without per-category scores
    only_all = write_results(summary, "S", out=tmp_path / "x/y/all.json")  # parent directories made
    assert only_all == [tmp_path / "x/y/all.json"] and sorted(p.name for p in tmp_path.rglob("*.json")) == ["all.json"]
    assert load_result(tmp_path / "x/y/all.json") == {"model": "/ckpt", "label": "S", "accuracy": summary["accuracy"],
                                                      "n": summary["n"], "mean_accuracy": 75.0}
    written = write_results(summary, "S", out_dir=tmp_path / "per/run")
    assert sorted(p.name for p in written) == ["a.json", "b.json"]
    assert load_result(tmp_path / "per/run/b.json") == {"model": "/ckpt", "label": "S", "accuracy": {"b": 100.0},
                                                        "n": {"b": 2}, "mean_accuracy": 100.0, "benchmark": "b"}
    assert benchmark_results([tmp_path / "per/run/a.json", tmp_path / "per/run/b.json"]) == {"a": 50.0, "b": 100.0}
    assert load_result(tmp_path / "per/run/a.json")["metrics"] == {"acc": 50.0, "geometry/acc": 25.0}


def test_a_literature_column_named_like_a_descriptive_column_fills_the_reported_rows(tmp_path):
    """Table 5f: the paper's `Masters` column (-/+) of the reported rows, from the literature CSV;
    only an empty cell is missing (a model called "NA" stays "NA"), numbers stay numbers."""
    from masters.tables import paper_table

    result = tmp_path / "r.json"
    result.write_text(json.dumps({"model": "m", "accuracy": {"a": 40.0}, "mean_accuracy": 40.0}))
    (tmp_path / "lit.csv").write_text("model,Masters,source,a\nDistiLLM-7B,-,paper,61.5\nDistiLLM-7B,+,paper,69.3\n"
                                      "NA,,paper,\n")
    spec = {"benchmarks": ["a"], "literature": str(tmp_path / "lit.csv"),
            "rows": [{"model": "S", "label": "DistiLLM", "columns": {"Masters": "-"}, "results": [[str(result)]]}]}
    mean, _, extra = paper_table(spec)
    assert list(mean.index) == [("S", "DistiLLM"), ("DistiLLM-7B", "reported"), ("DistiLLM-7B", "reported"),
                                ("NA", "reported")]
    assert extra["Masters"].tolist()[:3] == ["-", "-", "+"] and pd.isna(extra["Masters"].iloc[3])
    assert list(extra.columns) == ["Masters"]  # `source` is no descriptive column of the measured rows
    assert mean["a"].tolist()[:3] == [40.0, 61.5, 69.3] and pd.isna(mean["a"].iloc[3])
