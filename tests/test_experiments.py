"""masters.experiments: the config's experiments resolved into stages and shared files."""

import copy

import pytest
import yaml

from masters import paths
from masters.experiments import Design, DesignError, part_shard
from masters.schedule import ratio_str
from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def design(**changes):
    config = copy.deepcopy(CONFIG)
    for key, value in changes.items():
        config[key] = value
    return Design(config)


def test_extends_changes_one_setting():
    d = design()
    masters, mp = d.experiments["masters"], d.experiments["mask_progressive"]
    assert masters.loss == "masters" and mp.loss == "jsd"
    assert masters.plan == mp.plan and masters.sources == ("teacher", "student")
    assert d.experiments["reward_acc"].judge == "llm" and d.experiments["reward_acc"].loss == "masters"
    assert d.experiments["naive"].data == "labels" and d.experiments["mid_naive"].data == "labels"


def test_stages_follow_the_plan_and_schedule():
    d = design()
    stages = d.stages("S", "mid_masters")
    assert [(s.teacher, ratio_str(s.ratio)) for s in stages] == (
        [("M", r) for r in ("0.20", "0.10", "0.00")] + [("L", r) for r in ("0.20", "0.10", "0.00")])
    assert sum(s.steps for s in stages) == CONFIG["training"]["steps"]
    assert d.stages("S", "base") == []
    assert [s.teacher for s in d.stages("S", "naive")] == ["L"]


def test_outputs_are_shared_where_the_inputs_are():
    d = design()
    st = {e: d.stages("S", e) for e in ("masters", "mask_progressive", "rmax_0.3", "reward_distill")}
    # the r_max grid reuses the masked teachers of the main run (after the mid teacher's 3 stages)
    assert (st["rmax_0.3"][4].teacher, ratio_str(st["rmax_0.3"][4].ratio)) == ("L", "0.20")
    assert d.teacher_dir("L", st["masters"][0].ratio) == d.teacher_dir("L", st["rmax_0.3"][4].ratio)
    assert d.reward_file("S", "rmax_0.3", st["rmax_0.3"][0], 0) == d.reward_file(
        "S", "mid_masters", d.stages("S", "mid_masters")[0], 0)  # and the mid teacher's reward files
    assert d.teacher_dir("L", 0.0) == d.model_dir("L"), "ratio 0 is the teacher itself"
    # jsd-only and masters runs with the same reward settings share the reward files
    assert d.reward_file("S", "masters", st["masters"][1], 0) == d.reward_file("S", "mask_progressive",
                                                                                   st["mask_progressive"][1], 0)
    # a different reward is a different file; a different seed too
    assert d.reward_file("S", "masters", st["masters"][1], 0) != d.reward_file("S", "reward_distill",
                                                                                   st["reward_distill"][1], 0)
    assert d.reward_file("S", "masters", st["masters"][1], 0) != d.reward_file("S", "masters", st["masters"][1], 1)
    # the dataset answers do not depend on the seed
    naive = d.stages("S", "naive")[0]
    assert d.reward_file("S", "naive", naive, 0) == d.reward_file("S", "naive", naive, 2)


def test_reward_file_names_what_it_reads():
    d = design()
    stage = d.stages("S", "reward_acc")[0]
    path = d.reward_file("S", "reward_acc", stage, 1)
    v = paths.parse(d.results, "rewards", path)
    assert (v["judge"], v["distill"], v["use"], float(v["alpha"])) == ("llm-J", "normalized", "acc", 1.0)
    group = (v["student"], v["teacher"], v["ratio"], v["data"], int(v["seed"]), v["part"])
    got = d.reward_inputs(*group, v["judge"])
    assert got["responses"] == [d.responses("teacher", "M", 0.2, 4, 1, "all", judge="llm-J"),
                                d.responses("student", "S", 0.0, 4, 1, "all", judge="llm-J")]
    # the scores (D, pi_ref log-probs) of the same raw responses, shared by every reward setting
    scores = d.score_inputs(*group)
    assert got["scores"] == d.path("scores", student="S", teacher="M", ratio="0.20", data="t4s4", seed=1, part="all")
    assert scores["responses"] == [d.responses("teacher", "M", 0.2, 4, 1, "all"), d.responses("student", "S", 0.0, 4, 1, "all")]
    assert scores["teacher"] == d.teacher_dir("M", 0.2) and scores["student"] == d.model_dir("S")
    other = paths.parse(d.results, "rewards", d.reward_file("S", "reward_acc_rule", d.stages("S", "reward_acc_rule")[0], 1))
    assert other["judge"] == "rule" and d.reward_inputs(*group, "rule")["scores"] == got["scores"]


def test_a_student_with_underscores_and_the_llm_judge_round_trips():
    """Regression (issue: one source of truth): `llm-my_S_normalized_acc_a1` was parsed back with
    split("_") -> ValueError: too many values to unpack."""
    config = copy.deepcopy(CONFIG)
    config["models"] = {"my_S": "{results}/world/models/S", "big_T-1.5": "{results}/world/models/L",
                        "M": "{results}/world/models/M"}
    config["students"] = {"my_S": {"large": "big_T-1.5", "mid": "M"}}
    config["experiments"]["reward_acc"]["judge_model"] = None  # the student judges (App. F.7's default)
    config["reward"]["alpha"] = 0.25
    d = Design(config)
    for exp in ("reward_acc", "naive", "masters"):
        stage = d.stages("my_S", exp)[{"masters": 1, "reward_acc": 3}.get(exp, 0)]  # a stage of big_T-1.5
        path = d.reward_file("my_S", exp, stage, 2)
        v = paths.parse(d.results, "rewards", path)
        assert v["student"] == "my_S" and v["teacher"] == "big_T-1.5" and float(v["alpha"]) == 0.25
        assert paths.path(d.results, "rewards", **v) == path
        got = d.reward_inputs(v["student"], v["teacher"], v["ratio"], v["data"], int(v["seed"]), v["part"], v["judge"])
        assert all(r.startswith(f"{d.results}/judged/{v['judge']}/") for r in got["responses"])
    assert v["judge"] == "rule" and d.stages("my_S", "reward_acc") and \
        paths.parse(d.results, "rewards", d.reward_file("my_S", "reward_acc", d.stages("my_S", "reward_acc")[0], 0))[
            "judge"] == "llm-my_S"


def test_runs_and_seeds_come_from_the_tables():
    d = design()
    runs = d.runs()
    assert {s for (_, e, s) in runs if e == "masters"} == {0, 1, 2}  # Table 1
    assert {s for (_, e, s) in runs if e == "rmax_0.3"} == {0}  # Table 5a: one seed
    assert ("S", "base", 0) not in runs  # untrained
    evals = d.eval_runs()
    assert "models/S" in evals and "models/L" in evals and "models/M" in evals
    assert "S/mid_masters/s0/stage3" in evals and "S/mid_masters/s0/stage5" not in evals  # Fig. 2(b): 5 = final
    assert d.parse_run("S/masters/s2/final")["model_dir"].endswith("students/S/masters/s2/final")
    for run in evals:  # every run id parses back
        assert d.parse_run(run)["model_dir"]


def test_partition_parts():
    config = copy.deepcopy(CONFIG)
    config["training"]["stage_data"] = "partition"
    d = Design(config)
    assert [s.part for s in d.stages("S", "masters")] == [f"{k}of3" for k in range(3)]
    assert part_shard("2of5") == (2, 5) and part_shard("all") == (0, 1)
    with pytest.raises(DesignError):
        part_shard("5of5")


@pytest.mark.parametrize("change,key", [
    ({"experiments": {"x": {"plan": [{"teacher": "XL", "r_max": 0.2}]}}}, "experiments.x.plan[0].teacher"),
    ({"experiments": {"x": {"plan": [{"teacher": "large", "r_max": 0.3, "step": 0.2}]}}}, "experiments.x.plan[0]"),
    ({"experiments": {"x": {"extends": "x"}}}, "experiments.x.extends"),
    ({"experiments": {"x": {"sources": ["critic"]}}}, "experiments.x.sources"),
    ({"experiments": {"x": {"training": {"momentum": 1}}}}, "experiments.x.training"),
    ({"students": {"S": {"large": "XXL"}}}, "students.S.large"),
    ({"experiments": {"x": {"plan": [{"teacher": "large", "r_max": 0.5, "step": 0.05}], "training": {"steps": 5}}}},
     "experiments.x.training.steps"),
    # Table 5f's LLaVA-KD recipe (per-stage settings) under DeepSpeed: refused before any job
    ({"training": {"backend": "deepspeed"}}, "experiments.llava_kd_recipe.plan[0].training"),
])
def test_bad_designs_name_the_key(change, key):
    config = copy.deepcopy(CONFIG)
    for top, value in change.items():
        config[top] = {**config[top], **value}
    with pytest.raises(DesignError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        Design(config)


def test_a_step_of_0_025_trains_each_stage_against_the_ratio_its_teacher_was_masked_at(tmp_path):
    """Regression (issue: one source of truth): teachers were addressed by two decimals, so
    0.175/0.125/0.075/0.025 were masked at 0.17/0.12/0.07/0.03 while training logged 0.175."""
    import torch
    from safetensors.torch import save_file

    from masters.masked_teacher import mask_checkpoint

    config = copy.deepcopy(CONFIG)
    config["experiments"]["masters"]["plan"] = [{"teacher": "L", "r_max": 0.2, "step": 0.025}]
    d = Design(config)
    stages = d.stages("S", "masters")
    assert [s.ratio for s in stages] == [0.2, 0.175, 0.15, 0.125, 0.1, 0.075, 0.05, 0.025, 0.0]
    dirs = [d.teacher_dir("L", s.ratio) for s in stages]
    assert len(set(dirs)) == len(dirs) and dirs[1].endswith("/masked_r0.175") and dirs[7].endswith("/masked_r0.025")
    # the mask job gets the ratio from its directory name (rules/mask.smk: --ratios {wildcards.ratio})
    teacher = tmp_path / "L"
    teacher.mkdir()
    w = torch.arange(1, 1001, dtype=torch.float32).reshape(10, 100)  # distinct magnitudes: k zeros exactly
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(teacher / "model.safetensors"))
    for stage, path in zip(stages[:-1], dirs):
        ratio_in_name = float(path.rsplit("masked_r", 1)[1])
        assert ratio_in_name == stage.ratio
        stats = mask_checkpoint(teacher, tmp_path / "out", ratio_in_name, progress=False)
        assert stats.zeros.item() == round(stage.ratio * 1000)  # 175, not 170
        assert (tmp_path / "out" / path.rsplit("/", 1)[1]).is_dir()


def _differences(d, a: str, b: str) -> dict:
    """The settings in which experiments ``a`` and ``b`` differ (plan entries compared per teacher)."""
    ea, eb = d.experiments[a].__dict__, d.experiments[b].__dict__
    out = {k: (ea[k], eb[k]) for k in ea if k not in ("name", "plan") and ea[k] != eb[k]}
    pa, pb = ({p["teacher"]: p for p in d.experiments[x].plan} for x in (a, b))
    for teacher in sorted(set(pa) | set(pb)):
        if pa.get(teacher) != pb.get(teacher):
            out[f"plan.{teacher}"] = (pa.get(teacher), pb.get(teacher))
    return out


def _rows(table: str) -> dict[str, str]:
    return {r["label"]: r.get("experiment") or f"model:{r['model']}" for r in CONFIG["tables"][table]["rows"]}


def test_paper_tables_rows_are_the_paper_rows():
    """Each row of the paper's tables resolves to the intended experiment: the paper's Masters is
    the mid -> large run (Table 2's +Reward Feedback = Table 5a's 0.2 = 5c's S(#4)+T(#4) = 5e's
    R_acc + R_distill = Tables 3-4's student + Masters), and each ablation row differs from it by
    exactly the setting its label names."""
    d = design()
    main = "mid_masters"
    assert [(p["teacher"], p["r_max"]) for p in d.experiments[main].plan] == [("mid", 0.2), ("large", 0.2)]
    assert d.experiments[main].loss == "masters" and d.experiments[main].data == "generated"
    assert _rows("table2")["+Reward Feedback"] == _rows("table5a")["0.2"] == _rows("table5c")["S(#4)+T(#4)"] \
        == _rows("table5e")["R_acc + R_distill"] == _rows("table3")["student + Masters"] \
        == _rows("table4")["student + Masters"] == _rows("table5b")["mid -> large"] == main
    # Table 1: each row adds one component
    t1 = _rows("table1")
    assert set(_differences(d, t1["+Large Teacher"], t1["+Mask-Progressive"])) == {"data", "plan.large"}
    assert set(_differences(d, t1["+Mask-Progressive"], t1["+Reward Feedback"])) == {"loss"}
    # Table 2: the mid teacher, then masking, then RL; -Mid Teacher removes the mid teacher only
    t2 = _rows("table2")
    assert set(_differences(d, t2["+Large Teacher"], t2["+Mid Teacher"])) == {"plan.mid"}
    assert set(_differences(d, t2["+Mask-Progressive"], t2["+Reward Feedback"])) == {"loss"}
    assert set(_differences(d, t2["+Reward Feedback"], t2["-Mid Teacher"])) == {"plan.mid"}
    # Table 5a: the large teacher's r_max, after the same mid teacher
    for label, exp in _rows("table5a").items():
        diff = _differences(d, main, exp)
        assert diff == ({} if label == "0.2" else {"plan.large": diff["plan.large"]})
        assert diff.get("plan.large", (None, {"r_max": 0.2}))[1]["r_max"] == float(label)
    # Table 5b: which teachers
    t5b = _rows("table5b")
    mid_entry, large_entry = d.experiments[main].plan
    assert d.experiments[t5b["mid"]].plan == (mid_entry,) and d.experiments[t5b["large"]].plan == (large_entry,)
    assert set(_differences(d, main, t5b["mid"])) == {"plan.large"}
    assert set(_differences(d, main, t5b["large"])) == {"plan.mid"}
    # Table 5c: 8 responses per question and stage, from S, S+T or T; the group is what is trained
    for label, (n_t, n_s, sources) in {"S(#8)": (0, 8, ("student",)), "S(#4)+T(#4)": (4, 4, ("teacher", "student")),
                                       "T(#8)": (8, 0, ("teacher",))}.items():
        e = d.experiments[_rows("table5c")[label]]
        assert (e.n_teacher, e.n_student, e.sources) == (n_t, n_s, sources), label
        assert set(_differences(d, main, e.name)) <= {"n_teacher", "n_student", "sources"}
    # Table 5e: one reward setting per row
    t5e = _rows("table5e")
    want = {"reward"} | ({"judge", "judge_model"} if d.experiments[main].judge == "llm" else set())
    assert set(_differences(d, main, t5e["R_acc(rule)"])) == want
    assert set(_differences(d, t5e["R_acc(rule)"], t5e["R_acc"])) <= {"judge", "judge_model"}  # the LLM judge
    assert _differences(d, main, t5e["R_distill"]) == {"reward": ("both", "distill")}
    assert _differences(d, main, t5e["R_acc + R_distill(raw)"]) == {"distill": ("normalized", "raw")}
    # Table 5d: the components in its columns
    for row in CONFIG["tables"]["table5d"]["rows"]:
        e = d.experiments[row["experiment"]]
        cols = row["columns"]
        assert (cols["Mid Teacher"] == "+") == ("mid" in [p["teacher"] for p in e.plan]), row
        assert (cols["Multi-Response"] == "+") == (e.data == "generated"), row
        assert (cols["Reward Feedback"] == "+") == (e.loss == "masters"), row
        assert (row["label"] == "Mask-Progressive") == any(p["r_max"] > 0 for p in e.plan), row
    # App. F.8: large teacher only; RL with R_acc alone vs both rewards vs masking
    f8 = _rows("tableF8")
    assert all([p["teacher"] for p in d.experiments[e].plan] == ["large"] for e in f8.values())
    assert _differences(d, f8["Naive + RL (R_acc)"], f8["Naive + RL (R_acc + R_distill)"]) == {"reward": ("acc", "both")}
    assert set(_differences(d, f8["Naive"], f8["Naive + RL (R_acc + R_distill)"])) == {"loss"}
    assert set(_differences(d, f8["Naive + Mask-Progressive"], f8["Naive + Mask-Progressive + RL (R_acc + R_distill)"])) \
        == {"loss"}


def test_source_groups_hold_only_the_trained_source():
    """Table 5c: with no teacher (or student) responses the reward group, over which R_distill is
    normalized, is the trained source alone; naming only an empty source is an error."""
    d = design()
    for exp, source, model in (("source_student", "student", "S"), ("source_teacher", "teacher", "M")):
        stage = d.stages("S", exp)[0]
        v = paths.parse(d.results, "rewards", d.reward_file("S", exp, stage, 0))
        got = d.reward_inputs(v["student"], v["teacher"], v["ratio"], v["data"], 0, v["part"], v["judge"])
        assert got["responses"] == [d.responses(source, model, 0.2 if source == "teacher" else 0.0, 8, 0, "all",
                                                judge="rule")]
    config = copy.deepcopy(CONFIG)
    config["experiments"]["bad"] = {"extends": "mid_masters", "n_teacher": 0, "sources": ["teacher"]}
    with pytest.raises(DesignError, match=r"experiments.bad: no responses to train on \(n_teacher = 0"):
        Design(config)


def test_judge_model_per_experiment():
    """App. F.7: the judge is the student by default, or any model or teacher role per experiment."""
    config = copy.deepcopy(CONFIG)
    config["experiments"]["teacher_judge"] = {"extends": "reward_acc", "judge_model": "large"}
    config["experiments"]["m_judge"] = {"extends": "reward_acc", "judge_model": "M"}
    config["experiments"]["student_judge"] = {"extends": "reward_acc", "judge_model": None}
    d = Design(config)
    keys = {e: d.judge_key(d.experiments[e], "S") for e in ("reward_acc", "teacher_judge", "m_judge", "student_judge",
                                                              "mid_masters")}
    assert keys == {"reward_acc": "llm-J", "teacher_judge": "llm-L", "m_judge": "llm-M", "student_judge": "llm-S",
                    "mid_masters": "rule"}
    config["experiments"]["x"] = {"extends": "reward_acc", "judge_model": "huge"}
    with pytest.raises(DesignError, match="experiments.x.judge_model: unknown judge 'huge'"):
        Design(config)


def test_a_plan_of_three_teachers():
    """Table 5b's 14B -> 38B -> 78B: a plan of any number of teachers, each with its own schedule."""
    config = copy.deepcopy(CONFIG)
    config["models"]["XL"] = "{results}/world/models/XL"
    config["experiments"]["chain"] = {"extends": "mid_masters", "plan": [
        {"teacher": "mid", "r_max": 0.1, "step": 0.05}, {"teacher": "large", "r_max": 0.2, "step": 0.1},
        {"teacher": "XL", "r_max": 0.0}]}
    d = Design(config)
    stages = d.stages("S", "chain")
    assert [(s.teacher, ratio_str(s.ratio)) for s in stages] == [
        ("M", "0.10"), ("M", "0.05"), ("M", "0.00"), ("L", "0.20"), ("L", "0.10"), ("L", "0.00"), ("XL", "0.00")]
    assert sum(s.steps for s in stages) == CONFIG["training"]["steps"]
    assert d.teacher_dir("XL", 0.0) == d.model_dir("XL")


def test_jsd_only_runs_read_the_rule_judges_file_whatever_the_judge():
    """No reward enters a JSD-only loss, so its stages read the rule judge's reward file: with an
    LLM judge everywhere, only the RL runs cause LLM judge jobs."""
    config = copy.deepcopy(CONFIG)
    config["judge"] = {**config["judge"], "kind": "llm", "model": "J"}
    d = Design(config)
    judge_of = lambda exp: paths.parse(d.results, "rewards", d.reward_file("S", exp, d.stages("S", exp)[0], 0))["judge"]  # noqa: E731
    assert d.experiments["mask_progressive"].judge == "llm" and d.experiments["mask_progressive"].loss == "jsd"
    assert {e: judge_of(e) for e in ("naive", "mask_progressive", "mid_mask_progressive", "masters", "mid_masters",
                                     "reward_acc_rule")} == {"naive": "rule", "mask_progressive": "rule",
                                                             "mid_mask_progressive": "rule", "masters": "llm-J",
                                                             "mid_masters": "llm-J", "reward_acc_rule": "rule"}


def test_a_plan_entry_carries_its_own_training_settings_to_its_stages():
    """LLaVA-KD's recipe as stages (config.yaml's llava_kd_recipe): each entry's settings reach its
    stages and `masters train` as --stage-training INDEX JSON (which refuses them under DeepSpeed,
    as it does LLaVA-KD's other terms: below)."""
    from masters import specs

    d = design()
    stages = d.stages("S", "llava_kd_recipe")
    assert [st.settings() for st in stages] == [{"frozen": ["vision", "llm"]},
                                                {"lam": 0, "rdist": 0, "visual_kl": 0}, {}]
    assert [st.steps for st in stages] == [100, 100, 300]  # shares 1 : 1 : 3 of 500
    args = specs.train_args(d, "S", "llava_kd_recipe", 0)
    assert " --stage-training 0 '{\"frozen\": [\"vision\", \"llm\"]}' --stage-training 1 " in args
    assert "--stage-training" not in specs.train_args(d, "S", "llava_kd", 0)  # no settings: the same command


def test_a_bad_stage_setting_is_refused_before_any_model_is_loaded(tmp_path):
    from masters.cli import main

    stage = ["--stage", "T", str(tmp_path / "no-teacher"), str(tmp_path / "no.parquet"), "2", "0.0"]
    base = ["train", "--student", str(tmp_path / "no-student"), "--questions", str(tmp_path / "q.parquet"), *stage,
            "--loss", "jsd", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--stage-training 1: not the index"):
        main([*base, "--stage-training", "1", "{}"])
    with pytest.raises(ValueError, match=r"unknown settings \['steps'\]"):
        main([*base, "--stage-training", "0", '{"steps": 3}'])
    with pytest.raises(SystemExit, match="--stage-training .* runs with --backend torch only"):
        main([*base, "--stage-training", "0", '{"nll": 1}', "--backend", "deepspeed"])
