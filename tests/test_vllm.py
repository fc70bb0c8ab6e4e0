"""The vLLM backends up to the engine call (vLLM cannot be installed on these machines): the
engine arguments, the requests, the sampling parameters and the conversion of outputs into the
HF backend's responses schema, through a stand-in engine that records what it is given."""

from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from masters import generation
from masters.generation import RESPONSE_COLUMNS, SamplingParams, VLLMBackend, VLLMChatBackend


class Params(dict):
    """Stands for vllm.SamplingParams: records its keyword arguments."""

    def __init__(self, **kw):
        super().__init__(kw)


class Engine:
    """Stands for vllm.LLM: answers each conversation with n outputs made from the request."""

    def __init__(self):
        self.calls = []

    def chat(self, conversations, sampling_params, use_tqdm):
        self.calls.append((conversations, sampling_params))
        outs = []
        for i, conv in enumerate(conversations):
            n = (sampling_params[i] if isinstance(sampling_params, list) else sampling_params)["n"]
            outs.append(SimpleNamespace(outputs=[
                SimpleNamespace(token_ids=(10 + i, 20 + j), text=f"a{i}.{j}", finish_reason=("stop", "length")[j % 2])
                for j in range(n)]))
        return outs


def test_engine_arguments_are_bf16_tensor_parallel_and_no_remote_code(tmp_path):
    args = VLLMBackend.engine_args(tmp_path, gpus=4, trust_remote_code=False, dtype="bfloat16", max_model_len=None)
    assert args == {"model": str(tmp_path), "dtype": "bfloat16", "tensor_parallel_size": 4, "seed": 0,
                    "limit_mm_per_prompt": {"image": 1}, "trust_remote_code": False}
    assert VLLMBackend.engine_args(tmp_path, 0, True, "bfloat16", 4096)["tensor_parallel_size"] == 1
    assert VLLMBackend.engine_args(tmp_path, 0, True, "bfloat16", 4096)["max_model_len"] == 4096


def test_generation_requests_and_outputs_match_the_hf_schema(tmp_path, items):
    engine = Engine()
    backend = VLLMBackend(tmp_path, llm=engine, sampling_params=Params)
    questions = items.head(5).reset_index(drop=True)
    params = SamplingParams(n=3, top_k=0, max_new_tokens=7, seed=11)
    frame = generation.generate_responses(backend, questions, params, tmp_path / "r.parquet", source="teacher",
                                          model_name="T", ratio=0.15, batch_size=2, progress=False)
    assert list(frame.columns) == RESPONSE_COLUMNS and len(frame) == 15
    conversations, sampling = engine.calls[0]
    assert len(engine.calls) == 3 and len(conversations) == 2  # batches of 2 questions
    turn = conversations[1][0]
    assert turn["role"] == "user" and turn["content"][1] == {"type": "text", "text": questions.question[1]}
    assert isinstance(turn["content"][0]["image_pil"], Image.Image) and turn["content"][0]["type"] == "image_pil"
    # one SamplingParams per question (vLLM pairs a list with the prompts), each with its own seed:
    # vLLM seeds a request's n samples seed, seed + 1, ..., so a shared seed would share the noise
    batch0 = generation.batch_seed(11, "teacher", "T", 0.15, 0)
    assert sampling == [{"n": 3, "temperature": 1.0, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.05,
                         "max_tokens": 7, "seed": generation.derived_seed(batch0, str(qid))}
                        for qid in questions.id[:2]]
    seeds = [p["seed"] for _, call in engine.calls for p in call]
    assert len(set(seeds)) == 5 and min(abs(a - b) for a in seeds for b in seeds if a != b) > 3  # no overlap
    assert engine.calls[1][1][0]["seed"] == generation.derived_seed(
        generation.batch_seed(11, "teacher", "T", 0.15, 1), str(questions.id[2]))
    first = frame[frame.question_id == questions.id[0]]
    assert first.sample_idx.tolist() == [0, 1, 2] and first.token_ids.map(list).tolist() == [[10, 20], [10, 21], [10, 22]]
    assert first.finish_reason.tolist() == ["stop", "length", "stop"] and (frame.ratio == 0.15).all()
    assert (frame.num_tokens == 2).all() and first.text.tolist() == ["a0.0", "a0.1", "a0.2"]


def test_the_judge_chat_is_greedy_and_batched(tmp_path):
    engine = Engine()
    chat = VLLMChatBackend(tmp_path, batch_size=2, llm=engine, sampling_params=Params)
    prompts = [[{"role": "user", "content": f"judge {i}"}] for i in range(5)]
    assert chat.generate(prompts, max_new_tokens=9) == ["a0.0", "a1.0", "a0.0", "a1.0", "a0.0"]
    assert [len(c) for c, _ in engine.calls] == [2, 2, 1]
    assert engine.calls[0][1] == {"n": 1, "temperature": 0.0, "max_tokens": 9, "seed": 0}


def test_without_vllm_the_error_says_how_to_get_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the missing-package error cannot be shown")
    with pytest.raises(ImportError, match="pip install vllm.*backend: hf"):
        VLLMBackend(tmp_path)


def test_a_short_engine_answer_is_an_error(tmp_path, items):
    class Short(Engine):
        def chat(self, conversations, sampling_params, use_tqdm):
            return super().chat(conversations[:-1], sampling_params, use_tqdm)

    backend = VLLMBackend(tmp_path, llm=Short(), sampling_params=Params)
    with pytest.raises(RuntimeError, match="2 prompts"):
        backend.generate(items.head(2), SamplingParams(n=1), seed=0)
