"""Shared fixtures: a tiny tokenizer/processor trained once per session, and the smoke-scale
workflow run locally once per session (tests/test_workflow.py, tests/test_slurm.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs/smoke.yaml")


def snakemake_command(workdir, *args) -> list[str]:
    """The command line of the workflow at smoke scale in `workdir`."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", SMOKE, *args]


def snakemake(workdir, *args, cwd=None, timeout=1800):
    """Run the workflow at smoke scale in `workdir` (a subprocess, as a user would)."""
    return subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The whole smoke DAG run locally (`--cores 2`): its results directory."""
    workdir = tmp_path_factory.mktemp("smoke")
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return workdir / "results/smoke"


@pytest.fixture(scope="session")
def items() -> pd.DataFrame:
    from masters.world import vqa

    rows = []
    for task in vqa.TASKS:
        rows += vqa.generate(task, "train", 24, seed=0, image_size=56)
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tokenizer(items):
    from masters.world.tokenizer import train_tokenizer

    return train_tokenizer((items["question"] + " " + items["answer"]).tolist(), vocab_size=400)


@pytest.fixture(scope="session")
def processor(tokenizer):
    from masters.world.models import build_processor

    return build_processor(tokenizer, "qwen2_5_vl", 56)


TINY = dict(hidden_size=64, num_layers=1, intermediate_size=128, vision_hidden_size=32, vision_depth=1)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from masters.world.models import ModelSize, build_model

    return build_model("qwen2_5_vl", ModelSize(**TINY, vocab_multiple=64), tokenizer, seed=0)
