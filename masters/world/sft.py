"""Supervised fine-tuning of the tiny VLMs on the procedural VQA train split, or (the world's
judge model) on App. D judge conversations built from it (:mod:`masters.world.judge_data`).

Cross-entropy on the assistant tokens only (answer + ``<|im_end|>``); prompts are those of
:mod:`masters.prompts` (the processor's chat template, as lm-eval's ``--apply_chat_template``),
or the judge's text-only chat as :class:`masters.generation.HFChatBackend` renders it.
AdamW, linear warm-up then cosine decay, grad-norm clip. Deterministic for a seed and a
thread count.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from masters.prompts import decode_image, encode_prompts, prompt_texts


@dataclass(frozen=True)
class SFTConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 25
    seed: int = 0


def load_items(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate VQA parquet files (schema of :mod:`masters.world.vqa`)."""
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True)


def encode_batch(processor, images, questions, answers) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer batch with labels on the answer tokens and the eos token
    (``<|im_end|>``, which ends a turn in the chat template)."""
    return _with_targets(processor, prompt_texts(processor, questions), answers, images=list(images))


def encode_chat_batch(processor, conversations, replies) -> dict[str, torch.Tensor]:
    """The same for text-only chats (``[{"role", "content"}]`` lists) and their replies."""
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in conversations]
    return _with_targets(processor, prompts, replies)


def _with_targets(processor, prompts, answers, **inputs) -> dict[str, torch.Tensor]:
    tokenizer = processor.tokenizer
    targets = [a + tokenizer.eos_token for a in answers]
    enc = processor(text=[p + t for p, t in zip(prompts, targets)], padding=True, padding_side="right",
                    return_tensors="pt", **inputs)
    labels = torch.full_like(enc["input_ids"], -100)
    lengths = enc["attention_mask"].sum(dim=1)
    for row, target in enumerate(targets):
        n = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        end = int(lengths[row])
        labels[row, end - n : end] = enc["input_ids"][row, end - n : end]
    enc["labels"] = labels
    return dict(enc)


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then cosine decay to 10 % of it."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, processor, items: pd.DataFrame, cfg: SFTConfig, log_path: str | Path | None = None) -> list[dict]:
    """Train ``model`` in place on VQA rows (``image``, ``question``, ``answer``) or judge
    conversations (``messages``, ``reply``); returns (and writes as CSV) the loss log."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if "messages" in items:
        def batch_of(idx):
            return encode_chat_batch(processor, [items["messages"].iat[i] for i in idx],
                                     [items["reply"].iat[i] for i in idx])
    else:
        images = [decode_image(c) for c in items["image"]]
        questions, answers = items["question"].tolist(), items["answer"].tolist()

        def batch_of(idx):
            return encode_batch(processor, [images[i] for i in idx], [questions[i] for i in idx],
                                [answers[i] for i in idx])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    log: list[dict] = []
    order = rng.permutation(len(items))
    cursor = 0
    running = 0.0
    for step in (bar := tqdm(range(cfg.steps), desc="sft", mininterval=2.0)):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(items)), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        batch = batch_of(idx)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            log.append({"step": step + 1, "loss": running / n, "lr": lr_at(step, cfg)})
            bar.set_postfix(loss=f"{running / n:.3f}")
            running = 0.0
    model.eval()
    if log_path is not None:
        with open(log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr"])
            writer.writeheader()
            writer.writerows(log)
    return log


@torch.no_grad()
def greedy_answers(model, processor, items: pd.DataFrame, batch_size: int = 32, max_new_tokens: int = 8) -> list[str]:
    """Greedy answers for a quick accuracy check (the tables use lm-eval)."""
    out = []
    tokenizer = processor.tokenizer
    for start in range(0, len(items), batch_size):
        chunk = items.iloc[start : start + batch_size]
        enc = encode_prompts(processor, [decode_image(c) for c in chunk["image"]], chunk["question"], "left")
        gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out += [t.strip() for t in texts]
    return out


def build_and_train(architecture: str, size, processor_dir: str | Path, train_files: list[str], cfg: SFTConfig,
                    loss_log: str | Path, out: str | Path, data: str = "vqa") -> None:
    """One tiny VLM of the world: built from ``size`` (seeded), fine-tuned on ``data`` (``vqa``,
    or ``judge``: one App. D conversation per step and row), saved as a stock HF checkpoint
    (``masters sft``)."""
    from transformers import AutoProcessor

    from masters.checkpoints import save_checkpoint
    from masters.world import models

    processor = AutoProcessor.from_pretrained(processor_dir)
    model = models.build_model(architecture, size, processor.tokenizer, seed=cfg.seed)
    print(f"{architecture} {size}: {models.num_parameters(model):,} parameters")
    Path(loss_log).parent.mkdir(parents=True, exist_ok=True)
    items = load_items(train_files)
    if data == "judge":
        from masters.world.judge_data import judge_examples

        items = judge_examples(items, cfg.steps * cfg.batch_size, cfg.seed)
    train(model, processor, items, cfg, log_path=loss_log)
    save_checkpoint(model, processor, out)
