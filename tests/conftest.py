"""Shared fixtures: a tiny tokenizer/processor trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


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
