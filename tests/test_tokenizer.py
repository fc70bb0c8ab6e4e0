"""The locally trained tokenizer: Qwen special tokens, chat template, save/load."""

from transformers import AutoTokenizer

from masters.world.tokenizer import SPECIAL_TOKENS, special_token_ids


def test_special_tokens_are_single_ids_and_round_trip(tokenizer):
    ids = special_token_ids(tokenizer)
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    for token, token_id in ids.items():
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
        assert tokenizer.decode([token_id]) == token


def test_text_round_trips_including_unseen_characters(tokenizer):
    for text in ["What colour is the shape?", "Ünïcode ✓ 123", "<answer>1</answer>"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_renders_qwen_markup(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_save_and_reload_keeps_ids_and_template(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nHow many squares are there?<|im_end|>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|endoftext|>"


def test_the_judge_tokenizer_learns_the_app_d_text_and_the_vqa_one_does_not(tmp_path):
    """masters tokenizer --judge-out: the judge model's tokenizer encodes the App. D prompt in far
    fewer tokens; the VQA models' tokenizer is the one without it (their prompts unchanged)."""
    import pandas as pd

    from masters.cli import main
    from masters.judge import eval_messages
    from masters.world import vqa

    data = tmp_path / "colour.parquet"
    vqa.write_parquet(vqa.generate("colour", "train", 200, seed=0, image_size=28), data)
    main(["tokenizer", "--train", str(data), "--vocab-size", "500", "--architecture", "qwen2_5_vl",
          "--image-size", "28", "--out", str(tmp_path / "vqa"), "--judge-out", str(tmp_path / "judge")])
    from transformers import AutoProcessor

    vqa_proc, judge_proc = (AutoProcessor.from_pretrained(tmp_path / d) for d in ("vqa", "judge"))
    prompt = vqa_proc.apply_chat_template(eval_messages("What colour is the shape?", "red", "blue"),
                                          add_generation_prompt=True)
    n_vqa, n_judge = (len(p.tokenizer(prompt)["input_ids"]) for p in (vqa_proc, judge_proc))
    assert n_judge < 0.75 * n_vqa, (n_judge, n_vqa)
    question = pd.read_parquet(data).question.iloc[0]
    assert len(vqa_proc.tokenizer(question)["input_ids"]) <= len(judge_proc.tokenizer(question)["input_ids"])
    main(["tokenizer", "--train", str(data), "--vocab-size", "500", "--architecture", "qwen2_5_vl",
          "--image-size", "28", "--out", str(tmp_path / "again")])
    assert (tmp_path / "again/tokenizer.json").read_bytes() == (tmp_path / "vqa/tokenizer.json").read_bytes()
