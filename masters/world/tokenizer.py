"""A byte-level BPE tokenizer trained locally, with Qwen's chat and vision special tokens.

The special tokens and the chat template are those of Qwen2-VL / Qwen2.5-VL, so the stock
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` (and lm-eval's ``--apply_chat_template``)
work with it unchanged. Byte-level pre-tokenization means every string is encodable.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's chat template (a system prompt is added when the first message is not one).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text every model will see besides the VQA questions: chat scaffolding and judge prompts.
EXTRA_CORPUS = (
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "You are an evaluation assistant that gives accuracy scores compared with Ground Truth "
    "and Generated Text from AI. <question> </question> <ground truth> </ground truth> "
    "<generated text> </generated text> <answer> </answer> Output the numerical evaluation "
    "score (0 or 1) after giving a brief explanation. 0 1",
)

JUDGE_TEXT_REPEATS = 1000


def judge_corpus() -> list[str]:
    """What the judge model's own tokenizer learns besides the VQA text: the App. D prompts and
    the judge's replies, repeated (BPE merges by frequency, and the VQA corpus has ~10^4 lines),
    so that a judge prompt is ~250 tokens, not ~390. The VQA models keep a tokenizer without
    them: spending the merges of a 600-token vocabulary on judge text made their prompts
    longer and the student weaker (README, "Measured")."""
    from masters import judge
    from masters.world.judge_data import reply

    return [judge.EVAL_SYSTEM_PROMPT, judge.EVAL_USER_TEMPLATE, judge.PARSE_PROMPT_SYSTEM,
            judge.PARSE_PROMPT_USER_TEMPLATE, reply("", "", 0), reply("", "", 1)] * JUDGE_TEXT_REPEATS


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` and wrap it as a transformers tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + list(EXTRA_CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS, PAD)],
        model_max_length=4096,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the special tokens a Qwen VL config needs."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids


def corpus_of(paths: Iterable[str]) -> list[str]:
    """The tokenizer's training text: every ``question answer`` of the world's train files."""
    import pandas as pd

    corpus: list[str] = []
    for path in paths:
        frame = pd.read_parquet(path, columns=["question", "answer"])
        corpus += (frame["question"] + " " + frame["answer"]).tolist()
    return corpus
