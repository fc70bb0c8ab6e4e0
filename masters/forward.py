"""Teacher-forced forward passes over pre-generated responses, without ever building a full
batch × sequence × vocabulary logits tensor (METHOD.md §5).

A batch is (image, question) prompts, built by :mod:`masters.prompts` exactly as generation
built them, followed by the response tokens. The decoder's hidden states are
taken only at the positions that predict a response token, and the output head is applied
to them in chunks of positions: peak logits memory is ``chunk × V``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from masters.prompts import decode_image, encode_prompts, pad_token_id


@dataclass
class ResponseBatch:
    """Model inputs for prompt+response rows, and where the response tokens are."""

    inputs: dict[str, torch.Tensor]
    predicts_response: torch.Tensor  # [B, T] bool: position t predicts a response token (t+1)
    targets: torch.Tensor  # [N] the response tokens, row by row
    lengths: list[int]  # response lengths per row (sum = N)
    visual: torch.Tensor | None = None  # [B, T] bool: the image placeholders' positions (visual tokens)

    def to(self, device) -> ResponseBatch:
        """The batch on ``device`` (the model's); on the CPU, the same tensors."""
        inputs = {k: v.to(device) for k, v in self.inputs.items()}
        visual = self.visual.to(device) if self.visual is not None else None
        return ResponseBatch(inputs, self.predicts_response.to(device), self.targets.to(device), self.lengths, visual)


def build_batch(processor, images, questions, responses: list[list[int]], enc=None) -> ResponseBatch:
    """Right-padded ``prompt + response`` inputs for a list of rows (``enc``: the rows' prompts
    already encoded, right-padded, e.g. by :func:`encode_rows`)."""
    if any(len(r) == 0 for r in responses):
        raise ValueError("empty response: every response needs at least one token")
    vocab = len(processor.tokenizer)
    bad = [t for r in responses for t in r if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token_ids outside the tokenizer's {vocab} ids (e.g. {bad[0]}): wrong tokenizer or padding ids")
    pixels = {i for i in (getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None))
              if isinstance(i, int)}
    bad = [(row, t) for row, r in enumerate(responses) for t in r if t in pixels]
    if bad:
        raise ValueError(f"response {bad[0][0]} holds the image placeholder id {bad[0][1]}: a response cannot"
                         " hold image tokens (generated without suppressing them?)")
    if enc is None:
        enc = encode_prompts(processor, images, questions, "right")
    prompt_len = enc["attention_mask"].sum(dim=1).tolist()
    total = max(p + len(r) for p, r in zip(prompt_len, responses))
    rows = len(responses)
    pad = pad_token_id(processor.tokenizer)
    input_ids = torch.full((rows, total), pad, dtype=enc["input_ids"].dtype)
    attention = torch.zeros((rows, total), dtype=enc["attention_mask"].dtype)
    predicts = torch.zeros((rows, total), dtype=torch.bool)
    mm_types = torch.zeros((rows, total), dtype=enc["mm_token_type_ids"].dtype) if "mm_token_type_ids" in enc else None
    for i, (p, response) in enumerate(zip(prompt_len, responses)):
        input_ids[i, :p] = enc["input_ids"][i, :p]
        input_ids[i, p : p + len(response)] = torch.tensor(response, dtype=input_ids.dtype)
        attention[i, : p + len(response)] = 1
        predicts[i, p - 1 : p - 1 + len(response)] = True
        if mm_types is not None:
            mm_types[i, :p] = enc["mm_token_type_ids"][i, :p]
    inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    inputs.update(input_ids=input_ids, attention_mask=attention)
    if mm_types is not None:
        inputs["mm_token_type_ids"] = mm_types
    targets = torch.cat([torch.tensor(r, dtype=torch.long) for r in responses])
    image = getattr(processor, "image_token_id", None)
    visual = input_ids == image if isinstance(image, int) else torch.zeros_like(predicts)
    return ResponseBatch(inputs, predicts, targets, [len(r) for r in responses], visual)


def encode_rows(processor, rows, cache: dict | None = None):
    """The rows' prompts (``image`` cells, ``question``), right-padded as :func:`encode_prompts`
    gives them. With a ``cache`` (a dict kept for one processor), each distinct prompt is encoded
    once, alone, and batches are assembled from those: sequence tensors padded, the others (pixel
    patches, grids) concatenated in row order, as the processor does for a batch (tested)."""
    if cache is None:
        return encode_prompts(processor, [decode_image(c) for c in rows["image"]], rows["question"], "right")
    keys = [(bytes(c["bytes"]), q) for c, q in zip(rows["image"], rows["question"])]
    for key in dict.fromkeys(keys):
        if key not in cache:
            cache[key] = encode_prompts(processor, [decode_image({"bytes": key[0]})], [key[1]], "right")
    items = [cache[k] for k in keys]
    width = max(e["input_ids"].shape[1] for e in items)
    pad = {"input_ids": pad_token_id(processor.tokenizer)}
    out = {}
    for name in items[0].keys():
        parts = []
        for e in items:
            value = e[name]
            if value.dim() == 2 and value.shape == e["input_ids"].shape:  # a sequence: pad on the right
                value = torch.nn.functional.pad(value, (0, width - value.shape[1]), value=pad.get(name, 0))
            parts.append(value)
        out[name] = torch.cat(parts)
    return out


def build_batch_from_rows(processor, rows, cache: dict | None = None) -> ResponseBatch:
    """``rows``: a DataFrame with ``image``, ``question`` and ``token_ids`` columns (``cache``: see
    :func:`encode_rows`)."""
    return build_batch(processor, None, None, [list(map(int, t)) for t in rows["token_ids"]],
                       enc=encode_rows(processor, rows, cache))


def sequence_hidden_states(model, batch: ResponseBatch) -> torch.Tensor:
    """The decoder's final hidden states at every position: ``[B, T, H]``."""
    return model.model(**batch.inputs, use_cache=False)[0]


def response_hidden_states(model, batch: ResponseBatch) -> torch.Tensor:
    """Final hidden states at the positions that predict response tokens: ``[N, H]``."""
    return sequence_hidden_states(model, batch)[batch.predicts_response]


def visual_token_counts(batch: ResponseBatch) -> list[int]:
    """How many visual tokens (image placeholders) each row holds."""
    return batch.visual.sum(dim=1).tolist()


def chunked_logits(model, hidden: torch.Tensor, chunk_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(slice, logits[chunk, V])`` over the rows of ``hidden``, ``chunk_size`` rows at a time."""
    head = model.get_output_embeddings()
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, min(start + chunk_size, hidden.shape[0]))
        yield part, head(hidden[part]).float()


def split_rows(values: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """Split a flat ``[N]`` per-token tensor back into one tensor per response."""
    return list(torch.split(values, lengths))
