"""The paper configs (configs/paper/): each plans its tables with `snakemake -n`, fetching
nothing; Hub models and datasets resolve to the snapshot and dataset rules; the tiny world is
not built; every model's revision is a commit, every benchmark's too or said to be unpinned."""

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from masters.config import load
from masters.experiments import Design
from tests.conftest import REPO

FAMILIES = {  # family: (models fetched, masked teachers, trained runs)
    "qwen2_5_vl": (3, 14, 27),  # mid 0.05..0.2 (4) + large 0.05..0.5 (10); Table 5f's 4 runs
    "internvl3_5": (3, 18, 27),  # mid 0.05..0.4 (8: the paper's r_max for the 14B) + large 0.05..0.5 (10)
    "qwen3_vl": (2, 10, 17),  # one teacher, 0.05..0.5
    "internvl3": (4, 18, 13),  # 14B 0.05..0.2 (4) + 38B (4) + 78B 0.05..0.5 (10); Table 5b's chains
}


def configs(family):
    return [REPO / "config.yaml", REPO / "configs/paper/common.yaml", REPO / f"configs/paper/{family}.yaml"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_paper_config_plans_every_table_without_fetching(family, tmp_path):
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n",
                          "--cores", "8", "--directory", str(tmp_path), "--configfile",
                          *map(str, configs(family)[1:])], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if re.fullmatch(r"[a-z_0-9]+\s+\d+", line.strip())}
    hub, masks, trains = FAMILIES[family]
    assert counts["snapshot"] == hub and counts["dataset"] == 1, counts
    assert counts["mask"] == masks and counts["train"] == trains, counts
    assert not any(rule.startswith("world") for rule in counts), counts  # the tiny world is not built
    tables = [t for t, spec in yaml.safe_load((REPO / "config.yaml").read_text())["tables"].items()]
    config = load(configs(family), REPO)
    assert counts["table"] == len(config["tables"]) and set(config["tables"]) <= set(tables)
    # each benchmark is fetched once at a commit, then read offline: the task YAMLs, and lm-eval's ChartQA and MMMU
    assert counts["benchmark_data"] == len(Design(config).hub_benchmarks()) == len(
        [b for b in config["benchmarks"].values() if b["task"].endswith(".yaml") or b.get("fetch")])
    assert set(Design(config).hub_benchmarks()) == set(config["benchmarks"])  # every evaluation reads offline
    judged = [b for b, entry in config["benchmarks"].items() if entry.get("judge")]
    assert judged == ["mathvista", "mmbench", "mmvet"]  # the three the references score with GPT
    # one evaluation job per (run, benchmark); each judged one's responses are read by one judge job
    evaluated, rule, gpus, wildcards = [], None, {}, ""
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("wildcards:"):
            wildcards = line.strip()
            if rule == "evaluate":
                evaluated.append(re.search(r"benchmark=(\w+)", line).group(1))
        elif line.strip().startswith("resources:") and rule in ("evaluate", "generate"):
            gpus[(rule, wildcards)] = int(re.search(r"job_gpus=(\d+)", line).group(1))
    assert len(evaluated) == counts["evaluate"]
    assert counts["judge_benchmark"] == sum(b in judged for b in evaluated) > 0, counts
    # GPUs: a teacher's own evaluation 4, a student's 1; the dataset answers as responses none
    design, students = Design(config), set(config["students"])
    for (rule, wildcards), n in gpus.items():
        if rule == "evaluate":
            run = re.search(r"run=([^,\s]+)", wildcards).group(1)
            assert n == (4 if design.is_teacher_run(run) else 1), (wildcards, n)
        else:
            assert n == (0 if "source=label" in wildcards else 4), (wildcards, n)
    assert any(design.is_teacher_run(re.search(r"run=([^,\s]+)", w).group(1)) for r, w in gpus if r == "evaluate")
    assert any("source=label" in w for r, w in gpus if r == "generate") and students
    assert not list(tmp_path.glob("results/**/*.safetensors"))  # a dry run fetched nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_models_are_hub_snapshots_and_the_world_is_gone(family):
    config = load(configs(family), REPO)
    design = Design(config)
    assert not design.uses_world()
    assert set(config["students"]) and "S" not in config["students"] and "S" not in config["models"]
    assert not any(b.startswith("tiny_") for b in config["benchmarks"])
    for name, source in design.hub_models().items():
        assert design.model_dir(name) == f"{design.results}/hub/{name}"
        assert re.fullmatch(r"[0-9a-f]{40}", source["revision"]), (name, source)  # every model pinned
    assert design.question_files() == [f"{design.results}/datasets/chartqa_train.parquet"]
    assert config["masking"]["step"] == 0.05 and config["training"]["lr"] == 1e-6



def test_every_paper_benchmark_is_fetched_at_a_commit_or_says_it_is_not():
    """The revision each benchmark_data job fetches (`hub.config_pins`): the config entry's, else the
    one its task YAML pins. Each is a full commit, or the task YAML says in words that it is not
    pinned (SEED-Bench: no public page gives its commit); MMBench-CN inherits MMBench's pin through
    `include`."""
    from masters.hub import config_pins, is_pinned
    from masters.specs import fetch_benchmark_args

    config = load(configs("qwen2_5_vl"), REPO)
    design, unpinned = Design(config), []
    pins = {pin.name: pin for pin in config_pins(design, REPO)}
    for name in design.hub_benchmarks():
        entry = config["benchmarks"][name]
        assert ("--revision" in fetch_benchmark_args(design, name)) == ("revision" in entry)
        if not is_pinned(pins[name].revision):
            assert "NOT pinned" in (REPO / entry["task"]).read_text(), name
            unpinned.append(name)
    assert unpinned == ["seedbench"]
    assert pins["mmbench_cn"].revision == pins["mmbench"].revision
    assert is_pinned(pins["chartqa_train"].revision)


def test_the_paper_masking_step_reaches_every_plan_entry():
    """masking.step is the default step of a plan entry naming none (0.1 in config.yaml, 0.05
    at paper scale); an entry's own step wins."""
    design = Design(load(configs("qwen2_5_vl"), REPO))
    assert [s.ratio for s in design.stages("Qwen2.5-VL-7B", "mid_masters")] == [
        0.2, 0.15, 0.1, 0.05, 0.0, 0.2, 0.15, 0.1, 0.05, 0.0]
    default = Design(load([REPO / "config.yaml"], REPO))
    assert [s.ratio for s in default.stages("S", "mid_masters")] == [0.2, 0.1, 0.0, 0.2, 0.1, 0.0]
    own = load([REPO / "config.yaml"], REPO)
    own["experiments"]["mine"] = {"extends": "masters", "plan": [{"teacher": "large", "r_max": 0.2, "step": 0.2}]}
    assert [s.ratio for s in Design(own).stages("S", "mine")] == [0.2, 0.0]


def test_null_removes_a_name_and_unknown_datasets_are_named():
    from masters.config import validated
    from masters.experiments import DesignError

    base = load([REPO / "config.yaml"], REPO)
    removed = validated({**base, "benchmarks": {**base["benchmarks"], "tiny_shape": None}})
    assert "tiny_shape" not in removed["benchmarks"] and "tiny_colour" in removed["benchmarks"]
    bad = {**base, "train_questions": {**base["train_questions"], "datasets": ["nope"]}}
    with pytest.raises(DesignError, match=r"train_questions.datasets: 'nope' is not in `datasets`"):
        Design(bad)
    unpinned = {**base, "datasets": {"d": {"hub": "a/b", "files": ["*.parquet"], "columns": {
        "image": "i", "question": "q", "answer": "a"}}}}
    with pytest.raises(DesignError, match=r"datasets.d.revision: a Hub dataset needs a revision"):
        Design(unpinned)
    empty = {**base, "train_questions": {"files": [], "datasets": [], "per_file": None}}
    with pytest.raises(DesignError, match=r"train_questions: name at least one"):
        Design(empty)


def test_the_memory_plan_counts_parameters_and_shards_them(tmp_path, tokenizer, processor):
    from masters import memory
    from masters.checkpoints import save_checkpoint
    from masters.world import models
    from tests.conftest import TINY

    model = models.build_model("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=64), tokenizer, seed=1)
    save_checkpoint(model, processor, tmp_path / "m")
    assert memory.parameters_of(tmp_path / "m") == sum(p.numel() for p in model.state_dict().values())
    gpus = {"train": 8, "generate": 4, "score": 4, "judge": 1, "evaluate": 1, "evaluate_teacher": 4}
    rows = {r.rule: r for r in memory.plan(7e9, {"mid": 32e9, "large": 72e9}, gpus)}
    assert rows["train"].per_gpu_gb == round((16 * 7 + 2 * 72) / 8 + memory.OVERHEAD_GB, 1)  # 40.0
    assert rows["generate"].per_gpu_gb == 36.0 and rows["judge"].per_gpu_gb == 14.0
    assert rows["evaluate"].per_gpu_gb == 14.0 + memory.OVERHEAD_GB  # a student on one GPU
    assert rows["evaluate_teacher"].per_gpu_gb == 36.0 + memory.OVERHEAD_GB  # the 72B over four
    assert not {r.rule: r for r in memory.plan(7e9, {"large": 72e9}, {**gpus, "score": 1})}["score"].fits


def test_the_memory_plan_command_prints_each_family(capsys):
    from masters.cli import main

    main(["memory-plan", "--configfile", str(REPO / "configs/paper/common.yaml"),
          str(REPO / "configs/paper/qwen3_vl.yaml"), "--params", "Qwen3-VL-8B=8", "Qwen3-VL-32B=32"])
    out = capsys.readouterr().out
    assert "| Qwen3-VL-8B | GPUs |" in out and "| train | 8 | 32.0 | yes |" in out  # (128 + 64) / 8 + 8


def test_the_reported_rows_are_the_papers_tables_3_4_and_5f(tmp_path):
    """configs/paper/reported_table{3,4,5f}.csv equal a fresh parse of the paper's text (nothing
    typed in by hand), and a table renders them after the measured rows, labelled reported,
    with the paper's "-" kept empty and no Avg over a missing benchmark."""
    import importlib.util

    import pandas as pd

    from masters.tables import paper_table

    seed = next((REPO.parent / "shared/seeds").glob("000_*.txt"))
    spec = importlib.util.spec_from_file_location("reported_rows", REPO / "scripts/reported_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for table, count in ((3, 35), (4, 22), ("5f", 8)):
        shipped = pd.read_csv(REPO / f"configs/paper/reported_table{table}.csv", dtype=str, keep_default_na=False)
        text = seed.read_text()
        parsed = pd.DataFrame(module.parse_5f(text) if table == "5f" else module.parse(text, table))
        pd.testing.assert_frame_equal(shipped, parsed)
        assert len(shipped) == count
    mean, _, _ = paper_table({"benchmarks": ["ai2d", "chartqa", "mmvet"], "average": False,
                              "literature": str(REPO / "configs/paper/reported_table3.csv"), "rows": []})
    minicpm = mean.loc[("MiniCPM-V2.6-8B", "reported")]
    assert minicpm["ai2d"] == 82.1 and pd.isna(minicpm["chartqa"]) and pd.isna(minicpm["Avg"])
    qwen = mean.loc[("Qwen2.5-VL-7B-Masters", "reported")]
    assert qwen["Avg"] == pytest.approx((88.6 + 95.6 + 81.7) / 3)
    config = load(configs("qwen2_5_vl"), REPO)
    assert config["tables"]["table4"]["literature"] == "configs/paper/reported_table4.csv"
    # Table 5f: each method's pair of rows, without ("-") and with ("+") Masters, in its Masters cell
    spec = {"benchmarks": config["tables"]["table5f"]["benchmarks"], "average": False,
            "literature": str(REPO / config["tables"]["table5f"]["literature"]), "rows": []}
    mean, _, extra = paper_table(spec)
    assert extra.empty or "Masters" not in extra.columns  # no measured row names the column: not shown
    spec["rows"] = [{"model": "S", "label": "DistiLLM", "columns": {"Masters": "+"},
                     "results": [[_result(tmp_path, {b: 50.0 for b in spec["benchmarks"]})]]}]
    mean, _, extra = paper_table(spec)
    ril = [i for i, key in enumerate(mean.index) if key == ("RIL-8B", "reported")]
    assert [extra.iloc[i]["Masters"] for i in ril] == ["-", "+"]
    assert [mean.iloc[i]["mmstar"] for i in ril] == [78.6, 74.0]  # the paper's one drop with Masters
    assert extra.iloc[0]["Masters"] == "+" and mean.iloc[0]["mmstar"] == 50.0


@pytest.mark.parametrize("table", ["table3", "table4"])
def test_the_papers_tables_render_every_reported_number_in_its_column(table, tmp_path):
    """Through the table spec the workflow builds from a paper config: every column of the
    reported CSV is a table column (the paper's one MMMU-Pro column was once read under the
    config's two settings' names and dropped, leaving every reported row without an Avg); a row
    the paper reports in full gets the mean of its numbers as Avg (Table 1's definition: every
    column, MMMU-Pro once); a measured row's MMMU-Pro cell is the mean of its two settings."""
    import pandas as pd

    from masters import specs
    from masters.tables import paper_table

    design = Design(load(configs("internvl3_5"), REPO))
    spec = specs.table_spec(design, table, REPO)
    shipped = pd.read_csv(spec["literature"], keep_default_na=False, na_values=[""])
    numbers = [c for c in shipped.columns if c not in ("model", "source")]
    assert list(spec["columns"]) == numbers  # the paper's columns, in its order
    assert spec["columns"]["mmmu_pro"] == ["mmmu_pro_standard", "mmmu_pro_vision"]
    scores = {b: 40.0 + i for i, b in enumerate(spec["benchmarks"])}
    spec["rows"] = [{"model": "S", "label": "Masters", "results": [[_result(tmp_path, scores)]]}]
    mean, _, _ = paper_table(spec)
    assert list(mean.columns) == [*numbers, "Avg"]
    measured = mean.iloc[0]
    assert measured["mmmu_pro"] == (scores["mmmu_pro_standard"] + scores["mmmu_pro_vision"]) / 2
    assert measured["Avg"] == pytest.approx(measured[numbers].mean())
    reported = mean.iloc[1:].reset_index(drop=True)
    pd.testing.assert_frame_equal(reported[numbers], shipped[numbers].astype(float), check_names=False)
    complete = shipped[numbers].notna().all(axis=1)
    assert complete.sum() == (21 if table == "table3" else 11)
    assert reported["Avg"][complete].tolist() == pytest.approx(shipped[numbers][complete].mean(axis=1).tolist())
    assert reported["Avg"][~complete].isna().all()


def _result(tmp_path, accuracy: dict) -> str:
    """One checkpoint's result file, as the evaluate rule writes it."""
    from masters.tables import write_results

    summary = {"model": "x", "accuracy": accuracy, "n": dict.fromkeys(accuracy, 10)}
    return str(write_results(summary, "x", out=tmp_path / "result.json")[0])


def test_a_snapshot_job_gets_the_repository_revision_and_quoted_patterns():
    from masters import specs
    from masters.config import ConfigError, validated

    config = load(configs("qwen2_5_vl"), REPO)
    design = Design(config)
    assert specs.snapshot_args(design, "Qwen2.5-VL-7B") == (
        "--repo Qwen/Qwen2.5-VL-7B-Instruct --revision cc594898137f460bfe9f0759e9844b3ce807cfb5")
    config["models"]["Qwen2.5-VL-7B"]["allow_patterns"] = ["*.json", "model 1.safetensors"]
    assert specs.snapshot_args(Design(config), "Qwen2.5-VL-7B").endswith("--allow '*.json' 'model 1.safetensors'")
    no_files = {**config, "datasets": {"d": {"columns": {"image": "i", "question": "q", "answer": "a"}}}}
    with pytest.raises(ConfigError, match=r"key datasets.d: 'files' is a required property"):
        validated(no_files)


def test_the_gpu_check_config_puts_each_model_job_on_one_gpu():
    """configs/gpu_check.yaml (scripts/gpu_check.sh): the smoke scale, its model jobs on one GPU,
    the world's SFT on the CPU (it is built before, where there is no GPU)."""
    from masters.resources import family

    config = load([REPO / "config.yaml", REPO / "configs/smoke.yaml", REPO / "configs/gpu_check.yaml"], REPO)
    assert config["results"] == "results/gpu_check"
    gpus = {name: family(config["resources"], name, environ={}).resources["job_gpus"]
            for name in ("default", "sft", "mask", "generate", "judge", "score", "train", "evaluate")}
    assert gpus == {"default": 0, "sft": 0, "mask": 0, "generate": 1, "judge": 1, "score": 1, "train": 1,
                    "evaluate": 1}
    assert Design(config).uses_world() and config["generation"]["backend"] == config["judge"]["backend"] == "hf"


def test_masters_revisions_lists_every_pin_and_checks_each_on_the_hub(monkeypatch, capsys):
    """`masters revisions`: every repository a paper config fetches (models, the training dataset,
    the fetched benchmarks) at the revision its job fetches; `--check` resolves each with the Hub
    API (a stand-in here) and shows main's commit beside it; a revision the Hub lacks fails the
    command, naming it."""
    import huggingface_hub

    from masters.cli import main

    files = [str(f) for f in configs("qwen2_5_vl")[1:]]
    main(["revisions", "--configfile", *files])
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    config = load(configs("qwen2_5_vl"), REPO)
    assert [row[0].lstrip("| ") for row in table] == ["model"] * 3 + ["dataset"] + ["benchmark"] * len(
        Design(config).hub_benchmarks())
    assert {row[1] for row in table if row[-1].strip(" |") == "NO"} == {"seedbench"}
    mmbench_cn = next(row for row in table if row[1] == "mmbench_cn")
    assert mmbench_cn[2:4] == ["lmms-lab-encoder/MMBench", "56ba1af8954932c4804bd3f522e05ed96e63b654"]

    head, asked, missing = "f" * 40, [], set()

    class Hub:
        def repo_info(self, repo_id, revision, repo_type):
            asked.append((repo_id, revision, repo_type))
            if repo_id in missing or revision in missing:
                raise LookupError(f"Revision Not Found for {repo_id}@{revision}")
            return SimpleNamespace(sha=head if revision == "main" else revision)

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    main(["revisions", "--configfile", *files])  # no network without --check
    capsys.readouterr()
    assert asked == []
    main(["revisions", "--check", "--configfile", *files])  # qwen2_5_vl: every pin found
    rows = {line.split(" | ")[1]: line.split(" | ")[4:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["Qwen2.5-VL-72B"] == ["89c86200743eec961a297729e7990e8f2ddbc4c5", head + " |"]
    assert rows["seedbench"] == [head, "same |"]  # main resolves to main's commit
    assert ("lmms-lab-encoder/SEED-Bench", "main", "dataset") in asked
    missing.update({"MMMU/MMMU_Pro", "7c830fc25e874f9a861087e3c70587f2b9b555f3"})
    with pytest.raises(SystemExit, match=r"2 of \d+ not found on the Hub: mmmu_pro_standard, mmmu_pro_vision"):
        main(["revisions", "--check", "--configfile", *files])
    with pytest.raises(SystemExit, match="InternVL3.5-38B, mmmu_pro_standard"):
        main(["revisions", "--check", "--configfile", *[str(f) for f in configs("internvl3_5")[1:]]])
