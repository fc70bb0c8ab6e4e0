"""Pre-generation of responses (METHOD.md §3, paper Sec. 3.2 "Multiple Responses").

Every stage teacher T_{r_k} and the student π_ref sample ``n`` responses per training
question with the paper's sampling (temperature 1.0, top_p 0.9, top_k 50,
repetition_penalty 1.05), seeded. Backends sit behind :class:`GenerationBackend`:
``hf`` (batched transformers ``generate``, left padding) runs anywhere; ``vllm`` is the
paper-scale backend, imported lazily.

Output parquet, one row per response:
question_id, source (teacher|student), model, ratio, sample_idx, text, token_ids,
num_tokens, finish_reason (stop|length).
Work is written in parts (one per batch) next to the output, so a killed job resumes
where it stopped; the seed of a batch depends only on (seed, batch index), so a resumed
run writes the same responses as an uninterrupted one. The parts carry a fingerprint of
what they depend on (the model's identity, the questions, sampling, batch size, labels):
parts left by a run of other settings are discarded, never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from tqdm import tqdm

from masters.columns import QUESTION_COLUMNS, check_columns  # noqa: F401 (re-exported)
from masters.checkpoints import checkpoint_identity, fingerprint, load_checkpoint
from masters.prompts import decode_image, encode_prompts, eos_token_ids, pad_token_id, placeholder_token_ids

RESPONSE_COLUMNS = [
    "question_id", "source", "model", "ratio", "sample_idx",
    "text", "token_ids", "num_tokens", "finish_reason",
]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of METHOD.md §3 (defaults are the paper's)."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.05
    max_new_tokens: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n (responses per question) must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str


class GenerationBackend(Protocol):
    """Generates ``params.n`` completions for each (image, question) prompt."""

    def generate(self, questions: pd.DataFrame, params: SamplingParams, seed: int) -> list[list[Completion]]: ...


class HFBackend:
    """Batched ``generate`` of a transformers checkpoint (left padding, one batch at a time)."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False):
        self.model, self.processor = load_checkpoint(model_dir, trust_remote_code=trust_remote_code,
                                                     dtype=getattr(torch, dtype), device=device)
        self.model.eval()  # placed by load_checkpoint (device "auto": over the GPUs)
        self.dtype = dtype
        self.device = self.model.device
        self.identity = checkpoint_identity(model_dir)
        tok = self.processor.tokenizer
        self.eos_ids = eos_token_ids(self.model, tok)
        self.pad_id = pad_token_id(tok)
        # Never sample the embedding's padding rows (ids >= len(tokenizer)): METHOD.md §5; nor an
        # image placeholder: a response holding one cannot be fed back (teacher forcing, training).
        width = self.model.get_output_embeddings().weight.shape[0]
        self.suppress = placeholder_token_ids(self.model) + list(range(len(tok), width))

    @torch.no_grad()
    def generate(self, questions: pd.DataFrame, params: SamplingParams, seed: int) -> list[list[Completion]]:
        images = [decode_image(c) for c in questions["image"]]
        enc = encode_prompts(self.processor, images, questions["question"], "left").to(self.device)
        torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.temperature == 0:
            sampling = dict(do_sample=False)
        out = self.model.generate(
            **enc, **sampling, repetition_penalty=params.repetition_penalty,
            num_return_sequences=params.n, max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id, suppress_tokens=self.suppress,
        )
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        completions = [self._completion(ids) for ids in new]
        return [completions[i * params.n:(i + 1) * params.n] for i in range(len(questions))]

    def _completion(self, ids: list[int]) -> Completion:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if end is None:
            kept, reason = ids, "length"
        else:
            kept, reason = ids[: end + 1], "stop"
        text = self.processor.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(token_ids=kept, text=text, finish_reason=reason)


class HFChatBackend(HFBackend):
    """Greedy text-only chat completion (the LLM judge of METHOD.md §4), batched."""

    def __init__(self, model_dir: str | Path, batch_size: int = 8, **kwargs):
        super().__init__(model_dir, **kwargs)
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            chats = [self.processor.apply_chat_template(m, add_generation_prompt=True)
                     for m in prompts[start:start + self.batch_size]]
            enc = self.processor(text=chats, padding=True, padding_side="left", return_tensors="pt").to(self.device)
            # greedy as vLLM's judge: no repetition penalty a checkpoint's generation_config may set
            out = self.model.generate(**enc, do_sample=False, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                                      pad_token_id=self.pad_id, suppress_tokens=self.suppress)
            texts += [self._completion(ids).text for ids in out[:, enc["input_ids"].shape[1]:].tolist()]
        return texts


def suppressed_token_ids(model_dir: str | Path, trust_remote_code: bool = False) -> list[int]:
    """What :class:`HFBackend` never samples, read from a checkpoint directory without loading
    its weights: the image placeholders and the output embedding's padding rows (ids >=
    len(tokenizer)). Empty for a directory without a config (a test's stand-in engine)."""
    if not (Path(model_dir) / "config.json").is_file():
        return []
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    width = config.get_text_config().vocab_size
    tokens = len(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code))
    return sorted(set(placeholder_token_ids(SimpleNamespace(config=config))) | set(range(tokens, width)))


def import_vllm():
    """The vllm package, or a clear error (it is GPU-only and never installed on CPU machines)."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError("backend 'vllm' needs the vllm package (GPU only): pip install vllm, "
                          "or set generation.backend / judge.backend: hf") from error
    return vllm


class VLLMBackend:
    """Paper-scale generation with vLLM's offline engine (PAPER_SCALE.md, "vLLM"): one
    ``LLM.chat`` call per batch of questions, each conversation the same user turn the HF
    backend builds (an image part, then the question), ``n`` samples per question with the
    paper's sampling and the batch's seed; outputs converted to :class:`Completion`, so the
    responses parquet is the HF backend's schema. Tensor-parallel over the job's GPUs.

    ``llm`` / ``sampling_params``: an engine and the ``SamplingParams`` class to use instead of
    vLLM's (tests; vLLM cannot be installed here, so the engine call itself is unverified)."""

    def __init__(self, model_dir: str | Path, gpus: int = 1, trust_remote_code: bool = False, dtype: str = "bfloat16",
                 max_model_len: int | None = None, llm=None, sampling_params=None):
        if llm is None or sampling_params is None:
            vllm = import_vllm()
            sampling_params = sampling_params or vllm.SamplingParams
            llm = llm or vllm.LLM(**self.engine_args(model_dir, gpus, trust_remote_code, dtype, max_model_len))
        self.llm, self.sampling_params = llm, sampling_params
        self.identity, self.dtype = checkpoint_identity(model_dir), dtype
        self.suppress = suppressed_token_ids(model_dir, trust_remote_code)

    @staticmethod
    def engine_args(model_dir, gpus: int, trust_remote_code: bool, dtype: str, max_model_len: int | None) -> dict:
        """``vllm.LLM`` arguments: bf16 (``auto`` would run fp32 checkpoints in fp16), one image per
        prompt, tensor parallel over the job's GPUs, no remote code unless asked."""
        args = {"model": str(model_dir), "dtype": dtype, "tensor_parallel_size": max(1, int(gpus)), "seed": 0,
                "limit_mm_per_prompt": {"image": 1}, "trust_remote_code": bool(trust_remote_code)}
        if max_model_len:
            args["max_model_len"] = int(max_model_len)
        return args

    def sampling(self, params: SamplingParams, seed: int):
        """vLLM's SamplingParams of METHOD.md §3 (top_k 0 = off is -1 in vLLM); the tokens the HF
        backend suppresses get vLLM's lowest logit bias (-100), below every top-k candidate."""
        bias = {"logit_bias": dict.fromkeys(self.suppress, -100.0)} if self.suppress else {}
        return self.sampling_params(n=params.n, temperature=params.temperature,
                                    top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1,
                                    repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens,
                                    seed=seed, **bias)

    @staticmethod
    def conversations(questions: pd.DataFrame) -> list[list[dict]]:
        return [[{"role": "user", "content": [{"type": "image_pil", "image_pil": decode_image(cell)},
                                              {"type": "text", "text": str(question)}]}]
                for cell, question in zip(questions["image"], questions["question"])]

    @staticmethod
    def completion(output) -> Completion:
        """One vLLM ``CompletionOutput`` (token_ids, text, finish_reason 'stop' | 'length' | ...)."""
        reason = "stop" if output.finish_reason == "stop" else "length"
        return Completion(token_ids=[int(t) for t in output.token_ids], text=output.text, finish_reason=reason)

    def generate(self, questions: pd.DataFrame, params: SamplingParams, seed: int) -> list[list[Completion]]:
        # one SamplingParams per question, each its own seed: vLLM seeds a request's n samples
        # seed, seed + 1, ..., so one seed for the batch would give every question the same noise
        sampling = [self.sampling(params, derived_seed(int(seed), str(qid))) for qid in questions["id"]]
        outputs = self.llm.chat(self.conversations(questions), sampling_params=sampling, use_tqdm=False)
        if len(outputs) != len(questions):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(questions)} prompts")
        return [[self.completion(o) for o in out.outputs] for out in outputs]


class VLLMChatBackend(VLLMBackend):
    """Greedy text-only chat completion with vLLM (the LLM judge of METHOD.md §4)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 512, **kwargs):
        super().__init__(model_dir, **kwargs)
        self.batch_size = batch_size

    def generate(self, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
        greedy = self.sampling_params(n=1, temperature=0.0, max_tokens=max_new_tokens, seed=0)
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            outputs = self.llm.chat(prompts[start:start + self.batch_size], sampling_params=greedy, use_tqdm=False)
            texts += [out.outputs[0].text for out in outputs]
        return texts


class OpenAIChatBackend:
    """Greedy chat completion from an OpenAI-compatible endpoint (``/v1/chat/completions``): the
    GPT-4o / GPT-4 graders of the reference harnesses, or a vLLM / SGLang server. Temperature 0;
    the key from the environment variable ``api_key_env`` (None: a server that takes none);
    ``workers`` requests in flight; the ``openai`` client retries rate limits and errors.
    ``served`` collects the model versions the endpoint reports (recorded with the scores);
    ``failed`` counts the requests that still failed after the client's retries: each is an empty
    reply (unreadable, scored as the protocol scores those), so one bad request does not lose the
    others' replies; every request failing is an error (a wrong key, model or endpoint)."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 workers: int = 8, max_retries: int = 5, timeout: float = 120.0, client=None):
        import os

        key = os.environ.get(api_key_env, "") if api_key_env else "EMPTY"
        if not key:
            raise RuntimeError(f"the endpoint's API key is read from ${api_key_env}, which is not set "
                               "(benchmark_judge.api_key_env names the variable; null for a server without keys)")
        if client is None:
            import openai

            client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.client, self.model, self.workers = client, model, max(1, int(workers))
        self.served: set[str] = set()
        self.failed = 0

    def _one(self, messages: list[dict], max_new_tokens: int) -> str:
        reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0.0,
                                                    max_tokens=max_new_tokens)
        self.served.add(str(reply.model))
        return reply.choices[0].message.content or ""

    def _guarded(self, messages: list[dict], max_new_tokens: int) -> str | Exception:
        try:
            return self._one(messages, max_new_tokens)
        except Exception as error:  # noqa: BLE001 (the client's own retries are spent)
            return error

    def generate(self, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:
            replies = list(tqdm(pool.map(lambda m: self._guarded(m, max_new_tokens), prompts), total=len(prompts),
                                desc="judge requests", mininterval=10))
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors and len(errors) == len(replies):
            raise RuntimeError(f"all {len(replies)} requests to {self.model} failed; the first: {errors[0]!r}")
        if errors:
            print(f"judge: {len(errors)} of {len(replies)} requests failed after retries (empty replies); the first:"
                  f" {errors[0]!r}", file=sys.stderr)
        self.failed += len(errors)
        return ["" if isinstance(r, Exception) else r for r in replies]


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def make_backend(name: str, model_dir: str | Path, **kwargs) -> GenerationBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](model_dir, **kwargs)


def label_responses(questions: pd.DataFrame, tokenizer, model_name: str = "dataset") -> pd.DataFrame:
    """The dataset answers as one "response" per question (variant ``data: labels``, METHOD.md §7)."""
    check_columns(questions, ["id", "answer"], "questions")
    eos = tokenizer.eos_token
    rows = []
    for qid, answer in zip(questions["id"], questions["answer"]):
        ids = tokenizer(answer + eos, add_special_tokens=False)["input_ids"]
        rows.append({"question_id": qid, "source": "label", "model": model_name, "ratio": 0.0, "sample_idx": 0,
                     "text": answer, "token_ids": ids, "num_tokens": len(ids), "finish_reason": "stop"})
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


def derived_seed(*parts) -> int:
    """A seed drawn from ``parts`` (JSON-encoded, SHA-256): equal parts give the same seed, any
    other parts an unrelated one."""
    return int(fingerprint(parts), 16) % 2**62  # vLLM adds the sample index to it


def batch_seed(seed: int, source: str, model_name: str, ratio: float, batch_index: int) -> int:
    """The sampling seed of one batch of one generation: the run's seed, who generates (source,
    model, mask ratio) and the batch. Every masked teacher and the student draw samples of their
    own (a seed of the run and batch alone made sample j of every masked teacher of a model
    nearly the same response), and a resumed run draws what it would have."""
    return derived_seed(int(seed), source, model_name, float(ratio), int(batch_index))


def generation_fingerprint(backend, questions: pd.DataFrame, params: SamplingParams, source: str,
                           model_name: str, ratio: float, batch_size: int) -> str:
    """Hash of what the parts of a generation depend on; a backend without an ``identity``
    (a test double) is identified by its class."""
    spec = {"model": getattr(backend, "identity", type(backend).__qualname__),
            "backend": type(backend).__qualname__, "dtype": str(getattr(backend, "dtype", None)),
            "questions": hashlib.sha256("\x00".join(map(str, questions["id"])).encode()).hexdigest(),
            "params": asdict(params), "source": source, "model_name": model_name, "ratio": float(ratio),
            "batch_size": int(batch_size)}
    return fingerprint(spec)


def generate_responses(
    backend: GenerationBackend,
    questions: pd.DataFrame,
    params: SamplingParams,
    out_path: str | Path,
    source: str,
    model_name: str,
    ratio: float,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Sample ``params.n`` responses per question into ``out_path`` (resumable, see module doc)."""
    check_columns(questions, QUESTION_COLUMNS, "questions")
    if source not in ("teacher", "student"):
        raise ValueError(f"source must be 'teacher' or 'student', got {source!r}")
    out_path = Path(out_path)
    parts = out_path.with_name(out_path.name + ".parts")
    key = generation_fingerprint(backend, questions, params, source, model_name, ratio, batch_size)
    stamp = parts / "fingerprint.json"
    if parts.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()).get("fingerprint") != key):
        print(f"{parts}: parts of other settings (or unstamped); discarded")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": key}))
    starts = range(0, len(questions), batch_size)
    for batch_index, start in enumerate(tqdm(starts, desc=f"generate {model_name}", disable=not progress)):
        part = parts / f"part-{batch_index:06d}.parquet"
        if part.exists():
            continue  # done before an interruption
        chunk = questions.iloc[start:start + batch_size]
        completions = backend.generate(chunk, params, batch_seed(params.seed, source, model_name, ratio, batch_index))
        rows = [
            {"question_id": qid, "source": source, "model": model_name, "ratio": float(ratio),
             "sample_idx": j, "text": c.text, "token_ids": c.token_ids, "num_tokens": len(c.token_ids),
             "finish_reason": c.finish_reason}
            for qid, group in zip(chunk["id"], completions) for j, c in enumerate(group)
        ]
        tmp = part.with_suffix(".tmp")
        pd.DataFrame(rows, columns=RESPONSE_COLUMNS).to_parquet(tmp, index=False)
        tmp.rename(part)  # atomic: a part is either complete or absent
    frame = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("part-*.parquet"))], ignore_index=True)
    frame.to_parquet(out_path, index=False)
    shutil.rmtree(parts)
    return frame
