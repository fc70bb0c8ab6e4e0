"""masters.fidelity: the paper's orderings checked on result files (paired over seeds)."""

import copy
import json

import pandas as pd
import pytest
import yaml

from masters import specs
from masters.experiments import Design, DesignError
from masters.fidelity import check_claim, write_fidelity
from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _row(tmp_path, label, per_seed):
    """A table-spec row whose seed s scored ``per_seed[s]`` = {benchmark: accuracy}."""
    results = []
    for s, scores in enumerate(per_seed):
        files = []
        for bench, acc in scores.items():
            path = tmp_path / f"{label}_{s}_{bench}.json".replace(" ", "_").replace("+", "p")
            path.write_text(json.dumps({"model": label, "accuracy": {bench: acc}, "n": {bench: 10},
                                        "mean_accuracy": acc}))
            files.append(str(path))
        results.append(files)
    return {"model": "S", "label": label, "results": results}


def test_increasing_pairs_seeds_and_broadcasts_an_untrained_row(tmp_path):
    rows = [_row(tmp_path, "base", [{"a": 50.0, "b": 30.0}]),  # untrained: one result, Avg 40
            _row(tmp_path, "naive", [{"a": 60.0, "b": 40.0}, {"a": 50.0, "b": 40.0}, {"a": 44.0, "b": 40.0}]),
            _row(tmp_path, "masters", [{"a": 70.0, "b": 40.0}, {"a": 40.0, "b": 40.0}, {"a": 50.0, "b": 40.0}])]
    claim = {"claim": "monotone", "table": "t", "kind": "increasing", "rows": ["base", "naive", "masters"],
             "benchmarks": ["a", "b"], "table_rows": rows}
    first, second = check_claim(claim)
    # naive Avg per seed 50, 45, 42 minus base 40 -> 10, 5, 2
    assert first["comparison"] == "naive - base" and first["seeds"] == 3
    assert first["diff_mean"] == pytest.approx(17 / 3) and first["diff_std"] == pytest.approx(pd.Series([10, 5, 2]).std())
    # masters 55, 40, 45 minus naive 50, 45, 42 -> 5, -5, 3: mean 1 > 0 holds, but the claim is
    # only as strong as its spread
    assert second["diff_mean"] == pytest.approx(1.0) and second["holds"] and second["claim_holds"]
    rows[2] = _row(tmp_path, "masters", [{"a": 50.0, "b": 40.0}, {"a": 40.0, "b": 40.0}, {"a": 50.0, "b": 40.0}])
    assert [r["holds"] for r in check_claim({**claim, "table_rows": rows})] == [True, False]
    assert not check_claim({**claim, "table_rows": rows})[0]["claim_holds"]


def test_best_and_peak_inside(tmp_path):
    rows = [_row(tmp_path, r, [{"a": v}]) for r, v in (("0", 50.0), ("0.2", 70.0), ("0.5", 60.0))]
    peak = check_claim({"claim": "peak", "table": "t", "kind": "peak_inside", "rows": [], "benchmarks": ["a"],
                        "table_rows": rows})
    assert [(r["comparison"], r["diff_mean"]) for r in peak] == [("0.2 - 0", 20.0), ("0.2 - 0.5", 10.0)]
    assert all(r["claim_holds"] for r in peak)
    rows[2] = _row(tmp_path, "0.5", [{"a": 80.0}])  # the peak at an end: compared with itself
    peak = check_claim({"claim": "peak", "table": "t", "kind": "peak_inside", "rows": [], "benchmarks": ["a"],
                        "table_rows": rows})
    assert peak[1]["comparison"] == "0.5 - 0.5" and peak[1]["diff_mean"] == 0 and not peak[1]["claim_holds"]
    best = check_claim({"claim": "best", "table": "t", "kind": "best", "rows": ["0.2"], "benchmarks": ["a"],
                        "table_rows": rows})
    assert [(r["comparison"], r["holds"]) for r in best] == [("0.2 - 0", True), ("0.2 - 0.5", False)]


def test_report_files(tmp_path):
    rows = [_row(tmp_path, r, [{"a": v}]) for r, v in (("x", 50.0), ("y", 55.0))]
    spec = {"claims": [{"claim": "y beats x", "table": "t", "kind": "increasing", "rows": ["x", "y"],
                        "benchmarks": ["a"], "table_rows": rows}]}
    csv, md = write_fidelity(spec, tmp_path / "fidelity")
    table = pd.read_csv(csv)
    assert table.loc[0, ["comparison", "diff_mean", "holds"]].tolist() == ["y - x", 5.0, True]
    assert "**holds**: y beats x (t)" in md.read_text() and "+5.0 ± 0.0" in md.read_text()


def test_claims_of_the_default_config_name_real_rows():
    d = Design(copy.deepcopy(CONFIG))
    spec = specs.fidelity_spec(d, REPO)
    assert [c["table"] for c in spec["claims"]] == ["table1", "table2", "table5a", "table5e"]
    assert f"{d.results}/eval/S/mid_masters/s0/final/tiny_colour.json" in specs.fidelity_inputs(spec)
    for bad, key in ((
            {"claim": "x", "table": "table9", "kind": "best", "rows": ["a"]}, "fidelity[4].table: unknown table"),
            ({"claim": "x", "table": "table1", "kind": "best", "rows": ["nope"]}, "fidelity[4].rows: ['nope']"),
            ({"claim": "x", "table": "table1", "kind": "increasing", "rows": ["base"]}, "takes at least 2 rows")):
        config = copy.deepcopy(CONFIG)
        config["fidelity"].append(bad)
        with pytest.raises(DesignError, match=key.replace("[", r"\[").replace("]", r"\]")):
            Design(config)
