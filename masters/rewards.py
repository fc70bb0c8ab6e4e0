"""Distillation reward and group advantages (METHOD.md §5, §6; paper Eq. 4, Eq. 7).

Eq. 4 — token-level Jensen–Shannon divergence between the teacher's next-token
distribution P and the student's Q at position t, equal mixture weights, natural log:

    JSD(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M),   M = ½(P + Q),   0 ≤ JSD ≤ ln 2,

and per response D(ŷ) = (1/L) Σ_t JSD_t over its L response tokens.

Eq. 7 — the distillation reward, normalized within a group G (all teacher and student
responses of one question in one stage):

    R_distill = (D_max − D) / (D_max − D_min)      (= 1 when D_max − D_min < 1e-12),

or, unnormalized (Table 5e), R_distill = 1 − D / ln 2. Total reward R = R_acc + α·R_distill.

Advantage (Sec. 3.3 / App. B): A_j = (R_j − mean_G R) / (std_G R + 1e-6), Bessel-corrected
std; a group of one response has A = 0.

Full-vocabulary logits are never softmaxed for a whole batch×sequence at once: the JSD is
computed in chunks of positions, so the extra memory is O(chunk × V).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch
# torch is imported where it is used: the reward rule combines scores and judgements with pandas
# alone, in a second instead of the three that importing torch takes.

LN2 = math.log(2.0)
#: Groups whose divergences span less than this get R_distill = 1 for every response.
FLAT_GROUP_TOL = 1e-12
#: The ε of the advantage's denominator.
ADV_EPS = 1e-6


def _chunk_jsd(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """JSD per row of two [n, V] logit blocks, in float32."""
    import torch

    lp = torch.log_softmax(t.float(), dim=-1)
    lq = torch.log_softmax(s.float(), dim=-1)
    # Rows holding -inf logits (masked tokens) would give 0·(-inf) = nan below; clamping to
    # the smallest finite float keeps p·(log p − log m) = 0 there.
    tiny = torch.finfo(torch.float32).min
    if not (torch.is_grad_enabled() and (t.requires_grad or s.requires_grad)):
        # No autograd: the same arithmetic in place, 4 [n, V] buffers at most instead of ~6.
        lp.clamp_min_(tiny)
        lq.clamp_min_(tiny)
        lm = torch.logaddexp(lp, lq).sub_(LN2)
        d = torch.sub(lp, lm)
        kl_p = d.mul_(lp.exp_()).sum(-1)
        torch.sub(lq, lm, out=d)
        kl_q = d.mul_(lq.exp_()).sum(-1)
        return 0.5 * (kl_p + kl_q)
    lp = lp.clamp_min(tiny)
    lq = lq.clamp_min(tiny)
    lm = torch.logaddexp(lp, lq) - LN2
    kl_p = (lp.exp() * (lp - lm)).sum(-1)
    kl_q = (lq.exp() * (lq - lm)).sum(-1)
    return 0.5 * (kl_p + kl_q)


def token_jsd(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    vocab_size: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Per-position JSD (Eq. 4) between teacher and student next-token distributions.

    ``teacher_logits`` is ``[..., T, V_t]`` and ``student_logits`` ``[..., T, V_s]`` with the
    same leading shape. Both are cut to their first ``vocab_size`` entries (default
    ``min(V_t, V_s)``, i.e. the tokenizer's length when the widths differ only by padding)
    *before* the softmax. Returns float32 ``[..., T]``; differentiable w.r.t. both inputs.
    Computed ``chunk_size`` positions at a time (log_softmax in float32 per chunk); under autograd
    each chunk is recomputed in the backward, so what is kept for it is the inputs, not T x V
    intermediates.
    """
    return per_position(_chunk_jsd, teacher_logits, student_logits, vocab_size, chunk_size)


def per_position(fn, teacher_logits: torch.Tensor, student_logits: torch.Tensor, vocab_size: int | None = None,
                 chunk_size: int = 256) -> torch.Tensor:
    """``fn(t, s)`` (one value per row of two ``[n, V]`` logit blocks) over ``[..., T, V]`` logits,
    ``chunk_size`` positions at a time, both cut to ``vocab_size`` first (see :func:`token_jsd`)."""
    import torch

    if teacher_logits.dim() < 1 or student_logits.dim() < 1:
        raise ValueError("logits must have a vocabulary dimension")
    lead = tuple(teacher_logits.shape[:-1])
    if lead != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"teacher and student logits must agree on all but the vocabulary dimension, "
            f"got {tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    v_t, v_s = teacher_logits.shape[-1], student_logits.shape[-1]
    if vocab_size is None:
        vocab_size = min(v_t, v_s)
    if not 0 < vocab_size <= min(v_t, v_s):
        raise ValueError(
            f"vocab_size must be in [1, min(V_t, V_s)] = [1, {min(v_t, v_s)}], got {vocab_size}"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    t = teacher_logits.reshape(-1, v_t)
    s = student_logits.reshape(-1, v_s)
    n = t.shape[0]
    if n == 0:
        return torch.zeros(lead, dtype=torch.float32, device=student_logits.device)
    run = fn
    if n > chunk_size and torch.is_grad_enabled() and (t.requires_grad or s.requires_grad):
        # Under autograd every chunk would keep its float32 intermediates (~6 x chunk x V) for the
        # backward, T x V in all: keep only the chunk's inputs and recompute them one chunk at a time.
        from torch.utils.checkpoint import checkpoint

        def run(a, b):
            return checkpoint(fn, a, b, use_reentrant=False)
    parts = [run(t[a : a + chunk_size, :vocab_size], s[a : a + chunk_size, :vocab_size]) for a in range(0, n, chunk_size)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.reshape(lead)


def _as_floats(values: Any, what: str) -> list[float]:
    torch = sys.modules.get("torch")  # a tensor means torch is imported
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


def distill_reward(divergences: Sequence[float] | torch.Tensor, normalize: bool = True) -> list[float]:
    """R_distill (Eq. 7) for one group's divergences D.

    ``normalize=True``: (D_max − D)/(D_max − D_min), or 1.0 for every response when
    D_max − D_min < 1e-12 (this includes a group of one). ``normalize=False``: 1 − D/ln 2.
    """
    d = _as_floats(divergences, "divergences")
    if not d:
        return []
    if not normalize:
        return [1.0 - x / LN2 for x in d]
    hi, lo = max(d), min(d)
    if hi - lo < FLAT_GROUP_TOL:
        return [1.0] * len(d)
    return [(hi - x) / (hi - lo) for x in d]


def group_advantages(rewards: Sequence[float] | torch.Tensor) -> list[float]:
    """A_j = (R_j − mean R)/(std R + 1e-6) over one group, Bessel-corrected std.

    A group of one response gives ``[0.0]``; an empty group ``[]``.
    """
    r = _as_floats(rewards, "rewards")
    n = len(r)
    if n == 0:
        return []
    if n == 1:
        return [0.0]
    mean = math.fsum(r) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in r) / (n - 1))
    return [(x - mean) / (std + ADV_EPS) for x in r]


def _vocab_of(tok: Any) -> Mapping[str, int]:
    if isinstance(tok, Mapping):
        return tok
    inner = getattr(tok, "tokenizer", None)  # a processor wraps its tokenizer
    if not hasattr(tok, "get_vocab") and inner is not None:
        tok = inner
    return tok.get_vocab()


def _name_of(tok: Any, default: str) -> str:
    name = getattr(tok, "name_or_path", None) or getattr(getattr(tok, "tokenizer", None), "name_or_path", None)
    return str(name) if name else default


def check_same_tokenizer(tok_a: Any, tok_b: Any) -> None:
    """Raise ``ValueError`` unless both tokenizers (or processors, or vocab dicts) have the
    same token→id map (``get_vocab()``); the message names both and the first differing
    token (by ``tok_a``'s id order, then tokens only ``tok_b`` has)."""
    va, vb = _vocab_of(tok_a), _vocab_of(tok_b)
    if dict(va) == dict(vb):
        return
    na, nb = _name_of(tok_a, "tokenizer A"), _name_of(tok_b, "tokenizer B")
    for token, idx in sorted(va.items(), key=lambda kv: (kv[1], kv[0])):
        if vb.get(token) != idx:
            raise ValueError(
                f"tokenizers differ: {na!r} and {nb!r}; first differing token {token!r}: "
                f"id {idx} in {na!r}, {vb.get(token)} in {nb!r} "
                f"(sizes {len(va)} and {len(vb)}); teacher and student must share the tokenizer"
            )
    for token, idx in sorted(vb.items(), key=lambda kv: (kv[1], kv[0])):
        if token not in va:
            raise ValueError(
                f"tokenizers differ: {na!r} and {nb!r}; first differing token {token!r}: "
                f"missing in {na!r}, id {idx} in {nb!r} "
                f"(sizes {len(va)} and {len(vb)}); teacher and student must share the tokenizer"
            )


def score_responses(teacher, student, t_proc, s_proc, rows, batch_size: int = 8, chunk_size: int = 256,
                    progress: bool = False) -> tuple[list[float], list[list[float]]]:
    """D(ŷ) between the stage teacher and π_ref, and π_ref's log-prob of every response token.

    ``rows`` has ``image``, ``question`` and ``token_ids``. Teacher and student must share the
    tokenizer; both logit widths are cut to its length (METHOD.md §5). Hidden states are taken
    at response positions only and the heads applied ``chunk_size`` positions at a time.
    """
    import torch
    from tqdm import tqdm

    from masters.forward import build_batch_from_rows, chunked_logits, response_hidden_states, split_rows
    from masters.prompts import same_encoding

    check_same_tokenizer(t_proc, s_proc)
    if same_encoding(t_proc, s_proc):
        t_proc = s_proc  # one family: the student's batch serves the teacher
    vocab = len(s_proc.tokenizer)
    divergences: list[float] = []
    ref_logprobs: list[list[float]] = []
    prompts: dict = {}  # a question's prompt is encoded once for all its responses
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc="reward", disable=not progress):
            chunk = rows.iloc[start : start + batch_size]
            s_batch = build_batch_from_rows(s_proc, chunk, prompts).to(student.device)
            h_s = response_hidden_states(student, s_batch)
            t_batch = s_batch if t_proc is s_proc else build_batch_from_rows(t_proc, chunk).to(teacher.device)
            h_t = response_hidden_states(teacher, t_batch)
            jsd, logp = [], []
            t_chunks = chunked_logits(teacher, h_t, chunk_size)
            for part, s_logits in chunked_logits(student, h_s, chunk_size):
                _, t_logits = next(t_chunks)
                jsd.append(token_jsd(t_logits, s_logits, vocab_size=vocab, chunk_size=chunk_size))
                lp = torch.log_softmax(s_logits[:, :vocab], dim=-1)
                logp.append(lp.gather(1, s_batch.targets[part, None]).squeeze(1))
            for row_jsd, row_logp in zip(split_rows(torch.cat(jsd), s_batch.lengths),
                                         split_rows(torch.cat(logp), s_batch.lengths)):
                divergences.append(float(row_jsd.mean()))
                ref_logprobs.append(row_logp.tolist())
    return divergences, ref_logprobs


def group_rewards(frame, *, normalize: bool, alpha: float, use_acc: bool, use_distill: bool):
    """Add ``r_distill`` and ``r_total`` to a frame with ``question_id``, ``divergence`` (and
    ``r_acc``) columns.

    R_distill is normalized within each group, the responses to one question (Eq. 7), or raw;
    R = R_acc + α·R_distill, with either part dropped for the reward ablations of Table 5e.
    """
    if not (use_acc or use_distill):
        raise ValueError("a reward needs the accuracy part, the distillation part, or both")
    if frame["question_id"].isna().any():
        raise ValueError("column 'question_id' has missing values: every response needs its question")
    frame = frame.copy()
    by_group = frame.groupby("question_id")["divergence"]
    frame["r_distill"] = by_group.transform(lambda d: distill_reward(d.tolist(), normalize=normalize)).astype(float)
    acc = frame["r_acc"] if use_acc else 0.0
    frame["r_total"] = acc + (alpha * frame["r_distill"] if use_distill else 0.0)
    return frame


#: What identifies a response within its stage group (the join of the scores and the judged responses).
RESPONSE_KEY = ["question_id", "source", "sample_idx"]
#: A scores file: the teacher-forced half of the reward, computed once per stage group.
SCORE_COLUMNS = [*RESPONSE_KEY, "divergence", "ref_logprobs"]


def _first_response(frame, rows) -> str:
    """The first response of ``frame[rows]``, by its key (for an error message)."""
    row = frame.loc[rows].iloc[0]
    return f"question {row.question_id}, source {row.source}, sample {int(row.sample_idx)}"


def read_responses(files: Sequence[str], columns: Sequence[str]):
    """The response files of one stage group, concatenated in order; each must hold ``columns``."""
    import pandas as pd

    from masters.columns import check_columns

    frames = []
    for path in files:
        frame = pd.read_parquet(path)
        check_columns(frame, list(columns), path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def score_files(response_files: Sequence[str], questions, teacher_dir: str, student_dir: str, *, batch_size: int,
                chunk_size: int, trust_remote_code: bool = False, device: str = "cpu", dtype: str = "float32"):
    """The model half of the reward of one stage group: D(ŷ) against the stage's teacher and
    π_ref's log-probs (:func:`score_responses`) of every response in ``response_files``, as a
    frame of :data:`SCORE_COLUMNS`. It depends on the responses and the two checkpoints only,
    so the reward settings (judge, normalization, parts, α) share it. ``questions`` is indexed
    by id (``image``, ``question``)."""
    from masters.checkpoints import load_checkpoint
    from masters.questions import questions_of

    rows = read_responses(response_files, [*RESPONSE_KEY, "token_ids"])
    questions_of(rows, questions, "responses")  # every question is there
    joined = rows.join(questions[["image", "question"]], on="question_id")
    import torch

    placed = {"trust_remote_code": trust_remote_code, "dtype": getattr(torch, dtype), "device": device}
    teacher, t_proc = load_checkpoint(teacher_dir, **placed)
    student, s_proc = load_checkpoint(student_dir, **placed)
    scores = rows[RESPONSE_KEY].copy()
    scores["divergence"], scores["ref_logprobs"] = score_responses(teacher, student, t_proc, s_proc, joined,
                                                                   batch_size=batch_size, chunk_size=chunk_size,
                                                                   progress=True)
    return scores


def reward_responses(judged_files: Sequence[str], scores, *, distill: str, use: str, alpha: float,
                     scores_name: str = "scores"):
    """One stage group's judged responses with their ``divergence`` and ``ref_logprobs`` (from
    ``scores``, :func:`score_files` of the same responses) and the rewards of
    :func:`group_rewards` (``distill``: ``normalized`` Eq. 7 or ``raw``; ``use``: ``both``,
    ``acc`` or ``distill``). Every response must have exactly one score, of its own length."""
    import pandas as pd

    from masters.columns import check_columns

    rows = read_responses(judged_files, [*RESPONSE_KEY, "token_ids", "r_acc"])
    check_columns(scores, SCORE_COLUMNS, scores_name)
    for frame, what in ((rows, "the judged responses"), (scores, scores_name)):
        repeated = frame.duplicated(RESPONSE_KEY)
        if repeated.any():
            raise ValueError(f"{what}: response ({_first_response(frame, repeated)}) appears twice"
                             f" (one stage group holds each {'/'.join(RESPONSE_KEY)} once)")
    merged = rows.merge(scores[SCORE_COLUMNS], on=RESPONSE_KEY, how="left", indicator=True)
    unscored = merged["_merge"] != "both"
    if unscored.any() or len(scores) != len(rows):
        example = f"; none for ({_first_response(merged, unscored)})" if unscored.any() else ""
        raise ValueError(f"{scores_name} hold {len(scores)} scores for {len(rows)} judged responses{example}:"
                         " scored from other responses")
    lengths = merged["token_ids"].map(len) != merged["ref_logprobs"].map(len)
    if lengths.any():
        raise ValueError(f"{scores_name}: the ref_logprobs of ({_first_response(merged, lengths)}) have another"
                         " length than its token_ids: scored from other responses")
    return group_rewards(merged.drop(columns="_merge"), normalize=distill == "normalized", alpha=alpha,
                         use_acc=use in ("both", "acc"), use_distill=use in ("both", "distill"))
