"""Config validation: `snakemake -n` plans the default and smoke configs; bad values stop
the run before any job, with an error naming the key."""

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO


def snakemake(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra", [[], ["--configfile", str(REPO / "configs/smoke.yaml")]], ids=["default", "smoke"])
def test_dry_run_plans_the_world(extra, tmp_path):
    run = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    counts = {"world_data": 12, "world_sft": 4, "world_tokenizer": 1, "table": 11, "fig2": 1, "figF4": 1,
              "fidelity": 1, "judges": 1, "curves": 1, "curve": 3,  # world_sft: L, M, S and the judge J
              "train_questions": 1, "mask": 7}  # 5 L ratios (0.1..0.5) + 2 M ratios; 0 = the teacher
    for rule, count in counts.items():
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), rule
    for rule in ("generate", "judge", "score", "reward", "train", "evaluate"):
        assert any(line.split()[:1] == [rule] for line in out.splitlines()), rule


BAD_VALUES = [
    ({"world": {"train_per_task": "many"}}, "train_per_task"),
    ({"world": {"test_per_task": -5}}, "test_per_task"),
    ({"world": {"architecture": "llava"}}, "architecture"),
    ({"world": {"image_size": 60}}, "image_size"),
    ({"world": {"architecture": "qwen3_vl", "image_size": 56}}, "image_size"),
    ({"world": {"models": {"L": {"hidden_size": 100}}}}, "hidden_size"),
    ({"seed": -1}, "seed"),
    ({"evaluation": {"batch_size": 0}}, "batch_size"),
    ({"benchmarks": {"tiny_x": {"task": "benchmarks/missing.yaml"}}}, "benchmarks.tiny_x.task"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"world": {"models": {"S": {"vocab_multiple": 64}}}}, "world.models.S.vocab_multiple"),
    ({"tables": {"table1": {"rows": [{"label": "x", "experiment": "no_such_variant"}]}}}, "tables.table1.rows[0].experiment"),
    ({"experiments": {"masters": {"extends": "nope"}}}, "experiments.masters.extends"),
    ({"experiments": {"masters": {"plan": [{"teacher": "large", "r_max": -0.1}]}}}, "experiments.masters.plan[0].r_max"),
    ({"experiments": {"masters": {"plan": [{"teacher": "large", "r_max": 0.2, "step": 0}]}}}, "experiments.masters.plan[0].step"),
    ({"experiments": {"masters": {"plan": [{"teacher": "large", "r_max": 0.1, "step": 0.2}]}}}, "experiments.masters.plan[0].step"),
    ({"tables": {"table5e": {"benchmarks": ["tiny_unknown"]}}}, "tables.table5e.benchmarks"),
    ({"experiments": {"masters": {"plan": [{"teacher": "XL", "r_max": 0.2}]}}}, "experiments.masters.plan[0].teacher"),
    ({"experiments": {"masters": {"loss": "ppo"}}}, "experiments.masters.loss"),
    ({"resources": {"train": {"gpu": -1}}}, "resources.train.gpu"),
    ({"resources": {"trainer": {"gpu": 1}}}, "trainer"),
    ({"resources": {"evaluate": {"gpu_model": "h100 --exclusive"}}}, "resources.evaluate.gpu_model"),
    ({"resources": {"train": {"slurm_extra": "--mem=500G"}}}, "resources.train.slurm_extra"),
    ({"benchmarks": {"tiny_colour": {"column": "tiny_shape"}}}, "benchmarks.tiny_colour.column"),
    ({"benchmarks": {"tiny_colour": {"column": "colour_shape"}, "tiny_shape": {"column": "colour_shape"}},
      "tables": {"table5e": {"benchmarks": ["tiny_colour", "tiny_count"]}}}, "tables.table5e.benchmarks"),
    ({"tables": {"table1": {"literature": "configs/paper/no_such.csv"}}}, "tables.table1.literature"),
    # a reported column the table cannot read (the paper's MMMU-Pro column was once dropped so)
    ({"tables": {"table1": {"literature": "configs/paper/reported_table5f.csv"}}}, "tables.table1.literature"),
    # a path the jobs' commands carry: no whitespace (it would split the command's words)
    ({"results": "my results"}, "results"),
    ({"models": {"L": "/data/my models/L"}}, "models.L"),
]


def checked(override):
    """The checks `snakemake` runs before any job (rules/common.smk), without starting it."""
    from masters.config import merge, validate
    from masters.experiments import Design
    from masters.resources import all_families

    config = validate(merge(yaml.safe_load((REPO / "config.yaml").read_text()), override), REPO)
    Design(config)
    all_families(config["resources"])


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_config_value_names_the_key(override, key):
    with pytest.raises(ValueError, match="invalid config") as error:
        checked(override)
    assert key in str(error.value)


@pytest.mark.parametrize("override,key", [BAD_VALUES[0], BAD_VALUES[8], BAD_VALUES[13]],
                         ids=["schema", "task file", "design"])
def test_snakemake_stops_before_any_job_with_the_key(override, key, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(override))
    run = snakemake("-n", "--cores", "1", "--directory", str(tmp_path / "wd"), "--configfile", str(config))
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "invalid config" in out and key in out, out[-2000:]
    assert "Job stats" not in run.stdout
    assert not (tmp_path / "wd" / "results").exists()


def test_every_command_line_default_is_the_schemas():
    """A default is written once: each `masters` flag that mirrors a config key takes the
    schema's default (the CLI once said judge `llm` where the schema said `rule`)."""
    from masters.cli import build_parser
    from masters.config import default

    sub = build_parser()._subparsers._group_actions[0].choices
    mirrored = {("judge", "kind"): "judge.kind", ("judge", "max_new_tokens"): "judge.max_new_tokens",
                ("judge", "batch_size"): "judge.batch_size", ("generate", "max_new_tokens"): "generation.max_new_tokens",
                ("generate", "batch_size"): "generation.batch_size", ("generate", "top_p"): "generation.top_p",
                ("score", "batch_size"): "reward.batch_size", ("score", "chunk_size"): "reward.chunk_size",
                ("reward", "alpha"): "reward.alpha", ("reward", "distill"): "reward.distill",
                ("train", "lr"): "training.lr", ("train", "batch_size"): "training.batch_size",
                ("train", "save_every"): "training.save_every", ("evaluate", "batch_size"): "evaluation.batch_size"}
    for (command, dest), key in mirrored.items():
        assert sub[command].get_default(dest) == default(key), (command, dest)
    assert default("judge.kind") == "rule" and "[config judge.kind" in sub["judge"].format_help()


def test_the_rl_study_config_plans_its_table(tmp_path):
    """configs/study_rl.yaml (the README's RL study): one table, one run per loss/lr variant."""
    run = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), "--configfile",
                    str(REPO / "configs/study_rl.yaml"), "--", "results/tables/study_rl.csv")
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert any(line.split() == ["train", "7"] for line in out.splitlines()), out[-2000:]


def test_the_ablation_study_config_plans_fig5_f5_and_f7(tmp_path):
    """configs/study_ablations.yaml: Fig. 5, App. F.5 and F.7, one run per setting of mid_masters."""
    run = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), "--configfile",
                    str(REPO / "configs/study_ablations.yaml"), "--", *(f"results/tables/{t}.csv" for t in
                                                                       ("fig5", "tableF5", "tableF7")))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert any(line.split() == ["train", "11"] for line in out.splitlines()), out[-2000:]  # 10 + mid_masters
    for judge in ("llm-J", "llm-S", "llm-L"):
        assert f"judged/{judge}/" in out, judge
