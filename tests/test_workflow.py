"""The whole world DAG at smoke scale, run for real by Snakemake (about two minutes)."""

import hashlib
import json
import subprocess
import sys

import pandas as pd
import pytest
from safetensors import safe_open

from masters.world import sft
from tests.conftest import REPO

SMOKE = str(REPO / "configs/smoke.yaml")
BENCHMARKS = ["tiny_colour", "tiny_shape", "tiny_count", "tiny_size", "tiny_chart", "tiny_digits"]


def snakemake(workdir, *args):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", SMOKE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return workdir / "results/smoke"


@pytest.mark.slow
def test_accuracy_table_has_every_model_and_benchmark(world):
    table = pd.read_csv(world / "world/accuracy.csv", index_col="model")
    assert sorted(table.index) == ["L", "M", "S"]
    assert list(table.columns) == BENCHMARKS + ["Avg"]
    assert ((table >= 0) & (table <= 100)).all().all()
    for model in "LMS":
        summary = json.loads((world / f"eval/world_{model}.json").read_text())
        assert summary["n"] == {b: 8 for b in BENCHMARKS}
        assert table.loc[model, "Avg"] == pytest.approx(sum(summary["accuracy"].values()) / 6, abs=0.05)
    assert (world / "world/accuracy.md").read_text().count("|") > 20
    assert "\\begin{tabular}" in (world / "world/accuracy.tex").read_text()


@pytest.mark.slow
def test_lm_eval_prompts_are_the_sft_prompts(world):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(world / "world/models/S")
    test = pd.read_parquet(world / "world/data/digits/test.parquet")
    samples = [json.loads(l) for l in open(world / "eval/world_S_samples.jsonl")]
    digits = [s for s in samples if s["benchmark"] == "tiny_digits"]
    assert len(digits) == 8
    for sample in digits:
        question = test.question.iloc[sample["doc_id"]]
        assert sample["prompt"] == processor.apply_chat_template(sft.prompt_messages(question), add_generation_prompt=True)
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
    # rebuild data and S from clean elsewhere: same bytes, same weights
    targets = ["results/smoke/world/data/count/train.parquet", "results/smoke/world/models/S"]
    run = snakemake(tmp_path, "--cores", "2", *targets)
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
