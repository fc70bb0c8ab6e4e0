"""masters.specs: what the table, figure, train and evaluate jobs are given, without the DAG."""

import copy
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from masters import paths, specs
from masters.experiments import Design
from masters.schedule import ratio_str
from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def two_students():
    config = copy.deepcopy(CONFIG)
    config["models"]["S2"] = "{results}/world/models/S"
    config["students"]["S2"] = {"large": "L", "mid": "M"}
    return Design(config)


def test_table_rows_have_one_result_per_seed_and_benchmark():
    d = Design(CONFIG)
    spec = specs.table_spec(d, "table1", REPO)
    assert [r["label"] for r in spec["rows"]] == ["base", "+Large Teacher", "+Mask-Progressive", "+Reward Feedback"]
    base, masters = spec["rows"][0], spec["rows"][3]
    assert len(base["results"]) == 1, "an untrained model has one result, not one per seed"
    assert len(masters["results"]) == 3 and all(len(seed) == 6 for seed in masters["results"])
    assert masters["results"][2][0] == f"{d.results}/eval/S/masters/s2/final/tiny_colour.json"
    assert specs.table_inputs(spec)[0] == f"{d.results}/eval/models/S/tiny_colour.json"
    assert spec["caption"] == CONFIG["tables"]["table1"]["caption"] and spec["literature"] is None


def test_a_teacher_shared_by_two_students_is_one_row_and_5d_keeps_its_columns():
    d = two_students()
    spec = specs.table_spec(d, "table3", REPO)
    assert [(r["label"], r["model"]) for r in spec["rows"]] == [
        ("mid teacher", "M"), ("student", "S"), ("student", "S2"), ("student + Masters", "S"),
        ("student + Masters", "S2")]
    d5 = specs.table_spec(Design(CONFIG), "table5d", REPO)
    assert d5["average"] and d5["rows"][1]["columns"] == {"Mid Teacher": "-", "Multi-Response": "+",
                                                          "Reward Feedback": "-"}
    assert all(len(r["results"]) == 1 for r in d5["rows"]), "table 5d runs one seed"


def test_train_args_carry_each_stage_with_its_name_teacher_and_exact_ratio():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["x"] = {"extends": "mid_masters", "training": {"lr": 0.003, "steps": 40},
                                  "plan": [{"teacher": "mid", "r_max": 0.05, "step": 0.025},
                                           {"teacher": "large", "r_max": 0}]}
    d = Design(config)
    args = shlex.split(specs.train_args(d, "S", "x", 2))
    stages = [args[i + 1:i + 6] for i, a in enumerate(args) if a == "--stage"]
    assert [(s[0], s[4]) for s in stages] == [("M", "0.05"), ("M", "0.025"), ("M", "0.00"), ("L", "0.00")]
    assert stages[1][1] == d.teacher_dir("M", 0.025) and stages[1][1].endswith("masked_r0.025")
    assert stages[3][1] == d.model_dir("L")
    assert stages[0][2] == d.reward_file("S", "x", d.stages("S", "x")[0], 2)
    assert sum(int(s[3]) for s in stages) == 40
    assert args[args.index("--lr") + 1] == "0.003" and args[args.index("--seed") + 1] == "2"
    assert args[args.index("--sources") + 1:args.index("--lr")] == ["teacher", "student"]
    naive = shlex.split(specs.train_args(d, "S", "naive", 0))
    assert naive[naive.index("--sources") + 1] == "label" and naive[naive.index("--loss") + 1] == "jsd"


def test_deepspeed_settings_reach_the_train_command():
    from masters.cli import build_parser

    config = copy.deepcopy(CONFIG)
    config["training"] = {**config["training"], "backend": "deepspeed",
                          "deepspeed": {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}}
    table5f = config["tables"]["table5f"]  # its recipe row trains with the torch backend only (test_experiments.py)
    config["tables"]["table5f"] = {**table5f, "rows": [r for r in table5f["rows"] if r["experiment"] != "llava_kd_recipe"]}
    args = shlex.split(specs.train_args(Design(config), "S", "mid_masters", 0))
    parsed = build_parser().parse_args(["train", "--student", "s", "--questions", "q", "--out", "o", *args])
    assert parsed.backend == "deepspeed" and parsed.deepspeed_config == config["training"]["deepspeed"]
    assert "--deepspeed-config" not in specs.train_args(Design(CONFIG), "S", "mid_masters", 0)


def test_an_experiments_divergence_reaches_the_train_command_and_only_there():
    """Table 5f: DistiLLM's skew reverse KL in place of the JSD; the JSD runs' commands (hence
    Snakemake's params and their results) stay as they were."""
    from masters.cli import build_parser

    d = Design(CONFIG)
    for name, exp in d.experiments.items():
        args = specs.train_args(d, "S", name, 0) if exp.train else ""
        assert ("--divergence" in args) == (exp.training["divergence"] != "jsd"), name
    args = shlex.split(specs.train_args(d, "S", "distillm_masters", 0))
    parsed = build_parser().parse_args(["train", "--student", "s", "--questions", "q", "--out", "o", *args])
    assert (parsed.divergence, parsed.skew, parsed.loss) == ("srkl", 0.1, "masters")
    assert d.experiments["distillm"].loss == "jsd" and d.experiments["distillm"].plan == d.experiments["multi_response"].plan
    assert d.experiments["distillm_masters"].plan == d.experiments["masters"].plan


def test_fig2_and_figf4_specs():
    d = Design(CONFIG)
    fig2 = specs.fig2_spec(d)
    assert [r["label"] for r in fig2["runs"]] == ["S mid_masters", "S masters"]
    assert len(fig2["runs"][0]["stages"]) == 6 and fig2["runs"][0]["stages"][-1][0].endswith(
        "/eval/S/mid_masters/s0/final/tiny_colour.json")
    assert set(fig2["compare"]) == set(CONFIG["figures"]["fig2"]["compare"])
    assert f"{d.results}/students/S/masters/s0" in specs.fig2_inputs(fig2)
    f4 = specs.figf4_spec(d)["rewards"]
    assert [paths.parse(d.results, "rewards", r["file"])["ratio"] for r in f4] == [r["ratio"] for r in f4] == [
        ratio_str(r / 100) for r in range(20, -1, -10)] + [ratio_str(r / 100) for r in range(50, -1, -10)]
    assert [r["teacher"] for r in f4] == ["M"] * 3 + ["L"] * 6  # rmax_0.5: the mid teacher, then L from 0.5
    assert [paths.parse(d.results, "rewards", r["file"])["teacher"] for r in f4] == [r["teacher"] for r in f4]
    acc = specs.figf4_spec(d)["accuracy"]  # the masked teachers themselves, evaluated
    assert [(a["teacher"], a["ratio"]) for a in acc] == [(r["teacher"], r["ratio"]) for r in f4]
    assert acc[2]["results"][0] == f"{d.results}/eval/models/M/tiny_colour.json"  # r = 0: the teacher itself
    assert acc[3]["results"][0] == f"{d.results}/eval/masked/L/r0.50/tiny_colour.json"
    assert d.parse_run("masked/L/r0.50")["model_dir"] == d.teacher_dir("L", 0.5)
    assert "masked/L/r0.30" in d.eval_runs() and "masked/L/r0.35" not in d.eval_runs()
    assert specs.figf4_inputs({"rewards": f4, "accuracy": acc}) == [r["file"] for r in f4] + [
        f for a in acc for f in a["results"]]


def test_fig6_times_each_model_of_table3_from_its_evaluation_jobs():
    d = Design(CONFIG)
    spec = specs.fig6_spec(d)
    assert spec["table"] == "table3"
    assert [(r["model"], r["label"]) for r in spec["rows"]] == [
        ("M", "mid teacher"), ("S", "student"), ("S", "student + Masters")]
    assert spec["rows"][0]["timings"] == [[f"{d.results}/benchmarks/eval/models/M.tsv"]]  # one job per run
    assert spec["rows"][2]["timings"] == [[f"{d.results}/benchmarks/eval/S/mid_masters/s{s}/final.tsv"]
                                          for s in (0, 1, 2)]
    config = copy.deepcopy(CONFIG)
    config["evaluation"]["per_benchmark_jobs"] = True  # one job per (run, benchmark): all of them count
    rows = specs.fig6_spec(Design(config))["rows"]
    assert rows[0]["timings"] == [[f"{d.results}/benchmarks/eval/models/M/{b}.tsv" for b in d.benchmarks]]
    assert specs.fig6_inputs({"rows": rows})[:len(d.benchmarks)] == rows[0]["timings"][0]
    config["figures"] = {"fig6": {"table": "table9"}}
    with pytest.raises(ValueError, match=r"figures.fig6.table: unknown table 'table9'"):
        Design(config)


def test_trace_names_every_file_behind_a_row():
    d = Design(CONFIG)
    lines = specs.trace(d, "table1", "+Reward Feedback")
    text = "\n".join(lines)
    assert lines[0].startswith(f"{d.results}/tables/table1.csv")
    for seed in (0, 1, 2):
        for st in d.stages("S", "masters"):
            assert d.reward_file("S", "masters", st, seed) in text
    assert d.teacher_dir("L", 0.1) in text and d.responses("teacher", "L", 0.1, 4, 1, "all") in text
    assert d.model_dir("S") in text
    with pytest.raises(KeyError, match="no row"):
        specs.trace(d, "table1", "nope")
    base = specs.trace(d, "table1", "base")
    assert any("[model S]" in line for line in base) and not any("rewards" in line for line in base)


def test_cli_trace_reads_the_config_like_snakemake(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"results": "elsewhere"}))
    run = subprocess.run([sys.executable, "-m", "masters.cli", "trace", "table5a", "0.3", "--directory", str(REPO),
                          "--configfile", str(extra)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("elsewhere/tables/table5a.csv") and "masked_r0.30" in run.stdout


def test_a_caption_with_quotes_reaches_the_table_command_intact(tmp_path):
    """Specs go through the shell as one quoted word ({params.spec:q}): an apostrophe in a
    caption, or a quote in a row label, cannot break the command."""
    extra = tmp_path / "extra.yaml"
    caption = "Students' scores: \"mean\" ± std; $HOME `x`"
    extra.write_text(yaml.safe_dump({"fidelity": [], "tables": {"table1": {"caption": caption, "rows": [
        {"label": "it's base", "experiment": "base"}]}}}, allow_unicode=True))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--snakefile",
                          str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(extra), "--",
                          "results/tables/table1.csv"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    command = next(line for line in run.stdout.splitlines() if "masters table --spec" in line)
    words = shlex.split(command[command.index("masters table"):])
    spec = json.loads(words[words.index("--spec") + 1])
    assert spec["caption"] == caption and spec["rows"][0]["label"] == "it's base"


def test_figf4_takes_teacher_and_ratio_from_its_spec_not_from_the_file_names(tmp_path):
    import pandas as pd

    from masters.figures import divergence_by_ratio

    rewards = []
    for i, (teacher, ratio, values) in enumerate([("big_T", "0.175", [0.2, 0.4]), ("big_T", "0.00", [0.1]),
                                                  ("M", "0.175", [0.5])]):
        path = tmp_path / f"r{i}_s0_x.parquet"  # a name that parses as nothing
        pd.DataFrame({"divergence": values}).to_parquet(path)
        rewards.append({"file": str(path), "teacher": teacher, "ratio": ratio})
    table = divergence_by_ratio(rewards)
    assert table[["teacher", "ratio", "count"]].values.tolist() == [["M", 0.175, 1], ["big_T", 0.0, 1], ["big_T", 0.175, 2]]
    assert table["mean"].tolist() == pytest.approx([0.5, 0.1, 0.3])


def test_figf4_table_is_the_means_of_its_files(tmp_path):
    """Fig. F.4's table: per (teacher, ratio) the mean JSD of the reward files and the masked
    teacher's mean benchmark score, each from the files the spec names."""
    import pandas as pd

    from masters.figures import fig_f4

    def result(name, acc):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": name, "accuracy": acc, "n": {b: 10 for b in acc},
                                    "mean_accuracy": sum(acc.values()) / len(acc)}))
        return str(path)

    rewards, accuracy = [], []
    for teacher, ratio, jsd, acc in [("L", "0.00", [0.3, 0.5], {"a": 80.0, "b": 60.0}),
                                     ("L", "0.50", [0.1], {"a": 40.0, "b": 20.0})]:
        path = tmp_path / f"{teacher}{ratio}.parquet"
        pd.DataFrame({"divergence": jsd}).to_parquet(path)
        rewards.append({"file": str(path), "teacher": teacher, "ratio": ratio})
        accuracy.append({"teacher": teacher, "ratio": ratio,
                         "results": [result(f"{teacher}{ratio}{b}", {b: v}) for b, v in acc.items()]})
    fig_f4({"rewards": rewards, "accuracy": accuracy}, tmp_path / "figF4")
    table = pd.read_csv(tmp_path / "figF4.csv")
    assert table[["teacher", "ratio", "responses"]].values.tolist() == [["L", 0.0, 2], ["L", 0.5, 1]]
    assert table["jsd"].tolist() == pytest.approx([0.4, 0.1]) and table["accuracy"].tolist() == [70.0, 30.0]
    assert "0.4000" in (tmp_path / "figF4.md").read_text() and (tmp_path / "figF4.png").stat().st_size > 0


def test_fig6_sums_a_runs_jobs_and_averages_the_seeds(tmp_path):
    """Fig. 6's table from Snakemake benchmark files written by hand: a run's seconds are the sum
    over its jobs (one per benchmark), a row's the mean over its seeds."""
    import pandas as pd

    from masters.figures import fig6

    def tsv(name, seconds):
        path = tmp_path / f"{name}.tsv"
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:0{int(seconds)}\t10.0\n")
        return str(path)

    spec = {"table": "table3", "rows": [
        {"model": "M", "label": "mid teacher", "timings": [[tsv("m_a", 3.0), tsv("m_b", 1.5)]]},
        {"model": "S", "label": "student + Masters", "timings": [[tsv("s0_a", 1.0), tsv("s0_b", 1.0)],
                                                                  [tsv("s1_a", 2.0), tsv("s1_b", 2.0)]]}]}
    written = fig6(spec, tmp_path / "fig6")
    table = pd.read_csv(tmp_path / "fig6.csv")
    assert table.values.tolist() == [["M", "mid teacher", 4.5, 1], ["S", "student + Masters", 3.0, 2]]
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in written)


def test_curves_runs_save_step_checkpoints_and_the_figure_reads_their_curves():
    d = Design(CONFIG)
    curves = CONFIG["figures"]["curves"]
    spec = specs.curves_spec(d)
    assert [r["label"] for r in spec["runs"]] == [f"S {e}" for e in curves["experiments"]]
    assert spec["runs"][0]["curve"] == f"{d.results}/curves/S/{curves['experiments'][0]}/s0.csv"
    assert spec["limit"] == curves["limit"] and specs.curves_inputs(spec) == [r["curve"] for r in spec["runs"]]
    assert f"--curve-every {curves['every']} " in specs.train_args(d, "S", curves["experiments"][0], 1)
    assert "--curve-every" not in specs.train_args(d, "S", "rmax_0.3", 0)  # only the runs the figure follows
    config = copy.deepcopy(CONFIG)
    config["figures"]["curves"]["experiments"] = ["base"]
    with pytest.raises(Exception, match="figures.curves: 'base' is not trained"):
        Design(config)


def test_judges_spec_pairs_every_llm_judged_file_with_the_rule_judges():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["reward_acc"]["judge_model"] = "large"
    d = Design(config)
    spec = specs.judges_spec(d)
    llm_runs = {(s, e, seed) for s, e, seed in d.runs() if d.judge_key(d.experiments[e], s) != "rule"}
    assert {e for _, e, _ in llm_runs} == {e for e, x in d.experiments.items() if x.train and x.judge == "llm"
                                          and any(e == r for _, r, _ in d.runs())}
    judged = {p["llm"] for p in spec["pairs"]}
    for student, exp, seed in llm_runs:
        for st in d.stages(student, exp):
            v = paths.parse(d.results, "rewards", d.reward_file(student, exp, st, seed))
            assert set(d.reward_inputs(v["student"], v["teacher"], v["ratio"], v["data"], int(v["seed"]), v["part"],
                                       v["judge"])["responses"]) <= judged
    for pair in spec["pairs"]:
        llm, rule = (paths.parse(d.results, "judged", pair[k]) for k in ("llm", "rule"))
        assert llm["judge"] == pair["judge"] == "llm-L" and rule["judge"] == "rule"
        assert {k: v for k, v in llm.items() if k != "judge"} == {k: v for k, v in rule.items() if k != "judge"}
        assert pair["source"] == llm["source"]
    assert len(judged) == len(spec["pairs"]) and {p["source"] for p in spec["pairs"]} == {"teacher", "student"}
    assert specs.judges_inputs(spec)[:2] == [spec["pairs"][0]["llm"], spec["pairs"][0]["rule"]]
    assert specs.judges_outputs(d, spec) == [f"{d.results}/tables/judges.csv", f"{d.results}/tables/judges.md"]
    config["experiments"]["reward_acc"]["judge"] = "rule"
    assert specs.judges_spec(Design(config)) == {"pairs": []}


def test_llava_kd_settings_reach_the_train_command_and_deepspeed_refuses_its_recipe(tmp_path):
    from masters.cli import build_parser

    d = Design(CONFIG)
    args = shlex.split(specs.train_args(d, "S", "llava_kd", 0))
    parsed = build_parser().parse_args(["train", "--student", "s", "--questions", "q", "--out", "o", *args])
    assert (parsed.divergence, parsed.visual_kl, parsed.rdist, parsed.nll, parsed.frozen) == ("kl", 1.0, 0.5, 1.0, ["vision"])
    assert parsed.sources == ["label"] and parsed.loss == "jsd"
    masters = shlex.split(specs.train_args(d, "S", "llava_kd_masters", 0))
    assert masters[masters.index("--loss") + 1] == "masters" and "--nll" not in masters
    assert not any(f in specs.train_args(d, "S", "mid_masters", 0) for f in ("--visual-kl", "--rdist", "--nll", "--frozen"))
    from masters.cli import main

    # LLaVA-KD's terms run under DeepSpeed too (tests/test_zero.py); its recipe's per-stage settings do not,
    # refused before anything is loaded
    recipe = shlex.split(specs.train_args(d, "S", "llava_kd_recipe", 0))
    with pytest.raises(SystemExit, match="runs with --backend torch only"):
        main(["train", "--student", str(tmp_path / "none"), "--questions", "q", "--out", str(tmp_path / "o"),
              *recipe, "--backend", "deepspeed"])
