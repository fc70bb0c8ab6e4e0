"""The whole DAG (world, masking, generation, judging, rewards, training, evaluation, Tables 1-5,
figures) at smoke scale, run for real by Snakemake."""

import hashlib
import json
import re

import pandas as pd
import pytest
import yaml
from safetensors import safe_open

from masters.prompts import prompt_messages
from tests.conftest import REPO, SMOKE, snakemake

BENCHMARKS = ["tiny_colour", "tiny_shape", "tiny_count", "tiny_size", "tiny_chart", "tiny_digits"]


@pytest.fixture(scope="module")
def world(smoke_world):
    return smoke_world


@pytest.mark.slow
def test_accuracy_table_has_every_model_and_benchmark(world):
    table = pd.read_csv(world / "world/accuracy.csv", index_col="model")
    assert sorted(table.index) == ["L", "M", "S"]
    assert list(table.columns) == BENCHMARKS + ["Avg"]
    assert ((table >= 0) & (table <= 100)).all().all()
    for model in "LMS":
        scores = {}
        for b in BENCHMARKS:
            summary = json.loads((world / f"eval/models/{model}/{b}.json").read_text())
            assert summary["n"] == {b: 8}
            scores.update(summary["accuracy"])
        assert table.loc[model, "Avg"] == pytest.approx(sum(scores.values()) / 6, abs=0.05)
    assert (world / "world/accuracy.md").read_text().count("|") > 20
    assert "\\begin{tabular}" in (world / "world/accuracy.tex").read_text()


@pytest.mark.slow
def test_lm_eval_prompts_are_the_sft_prompts(world):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(world / "world/models/S")
    test = pd.read_parquet(world / "world/data/digits/test.parquet")
    samples = [json.loads(l) for l in open(world / "eval/models/S/samples.jsonl")]
    digits = [s for s in samples if s["benchmark"] == "tiny_digits"]
    assert len(digits) == 8
    for sample in digits:
        question = test.question.iloc[sample["doc_id"]]
        assert sample["prompt"] == processor.apply_chat_template(prompt_messages(question), add_generation_prompt=True)
        assert sample["target"] == test.answer.iloc[sample["doc_id"]]


@pytest.mark.slow
def test_checkpoints_are_stock_hf_dirs_with_distinct_padding(world):
    widths = {}
    for model in "LMS":
        path = world / f"world/models/{model}"
        for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
            assert (path / name).is_file() or name == "chat_template.jinja", f"{model}: {name}"
        config = json.loads((path / "config.json").read_text())
        widths[model] = config["text_config"]["vocab_size"]
        assert "auto_map" not in config, "no remote code"
        loss = pd.read_csv(world / f"world/sft/{model}_loss.csv")
        assert list(loss.columns) == ["step", "loss", "lr"] and loss.loss.notna().all()
    assert widths["L"] != widths["S"], "L and S must pad the vocabulary differently (METHOD.md §5)"


@pytest.mark.slow
def test_rebuild_is_bit_identical_and_nothing_left_to_do(world, tmp_path):
    again = snakemake(world.parent.parent, "-n", "--cores", "1")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # the session's world ran its jobs in the warm worker (masters/worker.py); rebuild data and S
    # from clean elsewhere, each job in its own process: same bytes, same weights
    jobs = [line for line in (world / "logs/worker.log").read_text().splitlines() if ": job " in line]
    assert any(" sft " in job and "models/S" in job for job in jobs) and len(jobs) > 20
    targets = ["results/smoke/world/data/count/train.parquet", "results/smoke/world/models/S"]
    run = snakemake(tmp_path, "--cores", "2", *targets, "--config", "warm_worker=False")  # --config takes every word after it
    assert not (tmp_path / "results/smoke/logs/worker.log").exists()
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    for task in ("colour", "count", "digits"):
        for split in ("train", "test"):
            rel = f"world/data/{task}/{split}.parquet"
            if (tmp_path / "results/smoke" / rel).exists():
                assert digest(world / rel) == digest(tmp_path / "results/smoke" / rel), rel
    with safe_open(world / "world/models/S/model.safetensors", "pt") as a, \
         safe_open(tmp_path / "results/smoke/world/models/S/model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert a.get_tensor(key).equal(b.get_tensor(key)), key


TABLE_ROWS = {
    "table1": ["base", "+Large Teacher", "+Mask-Progressive", "+Reward Feedback"],
    "table2": ["base", "+Large Teacher", "+Mid Teacher", "+Mask-Progressive", "+Reward Feedback", "-Mid Teacher"],
    "table3": ["mid teacher", "student", "student + Masters"],
    "table4": ["large teacher", "mid teacher", "student + Masters"],
    "table5a": ["0", "0.1", "0.2", "0.3", "0.4", "0.5"],
    "table5b": ["mid", "large", "mid -> large"],
    "table5c": ["S(#8)", "S(#4)+T(#4)", "T(#8)"],
    "table5d": ["Naive"] * 4 + ["Mask-Progressive"] * 4,
    "table5e": ["R_acc(rule)", "R_acc", "R_distill", "R_acc + R_distill(raw)", "R_acc + R_distill"],
    "table5f": ["DistiLLM", "DistiLLM", "LLaVA-KD", "LLaVA-KD", "LLaVA-KD (DPT, SFT, DFT)"],
    "tableF8": ["Naive", "Naive + Mask-Progressive", "Naive + RL (R_acc)", "Naive + RL (R_acc + R_distill)",
                "Naive + Mask-Progressive + RL (R_acc + R_distill)"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TABLE_ROWS))
def test_every_table_has_its_rows_columns_and_percentages(world, name):
    table = pd.read_csv(world / f"tables/{name}.csv", keep_default_na=False, dtype={"row": str})
    assert list(table["row"]) == TABLE_ROWS[name]
    average = name in ("table5a", "table5d")
    columns = ["Avg"] if average else BENCHMARKS + ["Avg"]
    assert [c for c in table.columns if c in BENCHMARKS + ["Avg"]] == columns
    assert [c + "_std" for c in columns] == [c for c in table.columns if c.endswith("_std")]
    if len(table):
        values = table[columns].astype(float)
        assert ((values >= 0) & (values <= 100)).all().all()
        assert (table[[c + "_std" for c in columns]].astype(float) >= 0).all().all()
    if name == "table5d":
        assert list(table["Reward Feedback"]) == ["-", "-", "+", "+", "-", "-", "+", "+"]
    md = (world / f"tables/{name}.md").read_text()
    assert md.count("\n") >= 3 + len(TABLE_ROWS[name]) and "\\begin{tabular}" in (world / f"tables/{name}.tex").read_text()


@pytest.mark.slow
def test_table1_is_the_mean_over_seeds_of_the_result_files(world):
    table = pd.read_csv(world / "tables/table1.csv").set_index("row")
    seeds = [0]  # configs/smoke.yaml (mean ± std over several seeds: tests/test_tables.py)
    scores = [json.loads((world / f"eval/S/masters/s{seed}/final/tiny_count.json").read_text())["accuracy"]["tiny_count"]
              for seed in seeds]
    assert table.loc["+Reward Feedback", "tiny_count"] == pytest.approx(sum(scores) / len(seeds), abs=1e-3)
    assert table.loc["+Reward Feedback", "tiny_count_std"] == 0
    base = json.loads((world / "eval/models/S/tiny_shape.json").read_text())["accuracy"]["tiny_shape"]
    assert table.loc["base", "tiny_shape"] == pytest.approx(base, abs=1e-3) and table.loc["base", "tiny_shape_std"] == 0
    categories = pd.read_csv(world / "tables/table1.categories.csv")  # every score of the summaries, per row
    shape = categories[(categories.row == "base") & (categories.benchmark == "tiny_shape")].set_index("metric")
    assert shape.loc["exact_match", "mean"] == pytest.approx(base, abs=1e-3)
    assert set(categories.row) == set(table.index) and set(categories.benchmark) == set(BENCHMARKS)


@pytest.mark.slow
def test_figures_and_shared_work(world):
    for name in ("fig2", "figF4"):
        for ext in ("png", "pdf"):
            assert (world / f"figures/{name}.{ext}").stat().st_size > 1000
    jsd = pd.read_csv(world / "figures/figF4.csv")  # configs/smoke.yaml: the masters run, L from 0.2
    assert sorted(jsd.ratio) == pytest.approx([0.0, 0.1, 0.2])
    assert jsd[["jsd", "accuracy"]].notna().all().all() and (jsd.responses > 0).all()
    times = pd.read_csv(world / "figures/fig6.csv")  # Table 3's models, timed by their evaluation jobs
    assert list(times.row) == ["mid teacher", "student", "student + Masters"] and (times.seconds > 0).all()
    curves = pd.read_csv(world / "figures/curves.csv")
    assert sorted(set(curves.step)) == [0, 6, 12] and set(curves.run) == {"S naive", "S mask_progressive", "S masters"}
    fidelity = pd.read_csv(world / "tables/fidelity.csv")
    assert list(fidelity.claim.unique()) == [c["claim"] for c in yaml.safe_load(open(REPO / "config.yaml"))["fidelity"]]
    # one masked checkpoint per (teacher, ratio > 0), shared by every experiment and seed
    masked = sorted(p.relative_to(world / "masked").as_posix() for p in (world / "masked").glob("*/masked_r*"))
    assert len(masked) == 7 and "L/masked_r0.50" in masked and not any(m.endswith("r0.00") for m in masked)
    log = pd.read_csv(world / "students/S/mid_masters/s0/train_log.csv")
    assert list(log.ratio.iloc[[0, -1]]) == [0.2, 0.0] and list(log.teacher.unique()) == ["M", "L"]


def _dry_run_jobs(workdir, override, tmp_path, *targets, configfiles=()):
    extra = tmp_path / "override.yaml"
    extra.write_text(override)
    run = snakemake(workdir, "--configfile", SMOKE, *configfiles, str(extra), "-n", "--cores", "1", *targets)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    out = run.stdout + run.stderr
    stats = out[out.index("Job stats:"):].split("\n\n")[0].splitlines()[3:]  # after the header rows
    jobs = {line.split()[0]: int(line.split()[1]) for line in stats if line.split()[0] != "total"}
    return jobs, out


@pytest.mark.slow
def test_changing_one_experiment_reruns_only_its_chain(world, tmp_path):
    jobs, out = _dry_run_jobs(world.parent.parent, "experiments:\n  rmax_0.3: {training: {lr: 0.0005}}\n", tmp_path)
    assert jobs == {"train": 1, "evaluate": 1, "table": 1, "fidelity": 1, "all": 1}, out[-3000:]  # Table 5a's claim
    assert "S/rmax_0.3/s0" in out and "table5a" in out
    # steps reach the command only through parameters computed from the input, which Snakemake
    # does not compare: the tracked stage schedule must still plan the rerun
    jobs, out = _dry_run_jobs(world.parent.parent, "experiments:\n  rmax_0.3: {training: {steps: 14}}\n", tmp_path)
    assert jobs == {"train": 1, "evaluate": 1, "table": 1, "fidelity": 1, "all": 1}, out[-3000:]
    jobs, out = _dry_run_jobs(world.parent.parent, "experiments:\n  source_teacher: {alpha: 0.5}\n", tmp_path)
    assert jobs == {"reward": 6, "train": 1, "evaluate": 1, "table": 1, "all": 1}, out[-3000:]  # 3 mid + 3 large stages


COUNT_CHANGED = "benchmarks:\n  tiny_count: {data: '{results}/world/data/count/train.parquet'}\n"
PER_BENCHMARK = "evaluation: {per_benchmark_jobs: true}\n"


@pytest.mark.slow
def test_changing_one_benchmark_reruns_its_evaluations_and_the_tables(world, tmp_path):
    jobs, out = _dry_run_jobs(world.parent.parent, COUNT_CHANGED, tmp_path)
    assert set(jobs) == {"evaluate", "table", "world_accuracy_table", "fig2", "figF4", "fig6", "fidelity", "curve",
                         "curves", "all"}, out[-3000:]
    for rule in ("train", "score", "reward", "generate", "mask"):
        assert rule not in jobs


@pytest.mark.slow
def test_per_benchmark_jobs_rerun_only_the_changed_benchmark(world, tmp_path):
    """evaluation.per_benchmark_jobs: one job per (checkpoint, benchmark), so a benchmark change
    plans only that benchmark's evaluations. Checked on the three world models (the world is
    copied from the smoke run, mtimes kept, so nothing upstream is rebuilt)."""
    import shutil

    workdir = tmp_path / "wd"
    shutil.copytree(world / "world", workdir / "results/smoke/world")
    (workdir / "results/smoke/world/accuracy.csv").unlink()
    per_benchmark = tmp_path / "per_benchmark.yaml"
    per_benchmark.write_text(PER_BENCHMARK)
    target = "results/smoke/world/accuracy.csv"
    run = snakemake(workdir, "--configfile", SMOKE, str(per_benchmark), "--cores", "2", target)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert len(list((workdir / "results/smoke/eval/models").glob("*/*.json"))) == 3 * len(BENCHMARKS)
    jobs, out = _dry_run_jobs(workdir, COUNT_CHANGED, tmp_path, target, configfiles=[str(per_benchmark)])
    assert jobs == {"evaluate": 3, "world_accuracy_table": 1}, out[-3000:]
    planned = re.findall(r"wildcards: run=(\S+), benchmark=(\S+)", out)
    assert sorted(set(planned)) == [(f"models/{m}", "tiny_count") for m in "LMS"], planned


@pytest.mark.slow
def test_report_holds_every_table_and_figure(world, tmp_path):
    report = tmp_path / "report.html"
    run = snakemake(world.parent.parent, "--report", str(report))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    html = report.read_text(errors="replace")
    for name in [*TABLE_ROWS, "fig2", "figF4", "fig6", "curves", "fidelity"]:
        assert name in html, name


def test_per_benchmark_jobs_plan_one_evaluation_per_checkpoint_and_benchmark(tmp_path):
    extra = tmp_path / "per_benchmark.yaml"
    extra.write_text(PER_BENCHMARK)
    run = snakemake(tmp_path / "wd", "-n", "--cores", "1", "--configfile", SMOKE, str(extra))
    assert run.returncode == 0, run.stderr[-3000:]
    per_model = snakemake(tmp_path / "wd", "-n", "--cores", "1")
    counts = [int(l.split()[1]) for r in (run, per_model) for l in (r.stdout + r.stderr).splitlines()
              if l.split()[:1] == ["evaluate"]]
    assert counts[0] == 6 * counts[-1]  # (the job stats are printed twice by -n)
