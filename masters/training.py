"""Offline, stage-by-stage training of the student (METHOD.md §2, §6, §7; paper Eq. 5, 8).

Stages run in plan order; stage k trains on its rewarded responses with its masked teacher
T_{r_k} loaded for the JSD term. Every step: a batch of responses (advantages precomputed
per group), the student's hidden states at the response positions, and the loss of
:mod:`masters.losses` computed ``chunk_size`` positions at a time — each chunk's loss is
back-propagated into the detached hidden states before the next chunk's logits exist, then
the hidden states are back-propagated once through the model. So no batch × sequence ×
vocabulary tensor is ever alive, in the forward pass or in the graph.

Everything is written into ``OUT.partial/`` and renamed to ``OUT`` when the last stage is done,
so ``OUT`` is complete or absent (a workflow manager that deletes an incomplete output does not
delete the resume state). ``OUT.partial/resume/`` carries a fingerprint of the run (student,
stages, config): a partial run of different settings is discarded, not resumed.

Resumable: every ``save_every`` steps the student weights (safetensors), the optimizer state
and the torch RNG state (``torch.save``, read back with ``weights_only=True``) and the
position (stage, step) are
written atomically; data order is a pure function of (seed, stage, epoch), so a killed run
resumes and ends with the same weights as an uninterrupted one on CPU. A stock HF
checkpoint is written at the end of every stage, and with ``curve_every`` = N also before the
first step and every N steps (``steps/step{N}``: the points of a learning curve).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from masters.checkpoints import fingerprint as checkpoint_fingerprint
from masters.checkpoints import load_checkpoint, save_checkpoint
from masters.config import default
from masters.divergences import token_divergence
from masters.forward import build_batch_from_rows, chunked_logits, sequence_hidden_states, visual_token_counts
from masters.generation import check_columns
from masters.llava_kd import freeze, mdist, rdist
from masters.losses import LossWeights, token_losses
from masters.prompts import same_encoding
from masters.rewards import check_same_tokenizer, group_advantages

TRAIN_COLUMNS = ["question_id", "source", "token_ids", "r_total", "ref_logprobs"]
LOG_COLUMNS = ["step", "stage", "teacher", "ratio", "loss", "pg", "kl", "jsd", "r_acc", "r_distill", "r_total", "lr",
               "vis", "rel"]


@dataclass(frozen=True)
class Stage:
    """One stage: its masked teacher checkpoint, its rewarded responses, and its steps."""

    teacher: str  # checkpoint directory of T_{r_k}
    responses: str  # parquet: TRAIN_COLUMNS (+ r_acc, r_distill, group)
    steps: int
    ratio: float = 0.0
    name: str = ""
    # this stage's own settings over the run's (STAGE_SETTINGS: frozen parts, loss weights),
    # as sorted (key, value) pairs; e.g. LLaVA-KD's DPT / SFT / DFT as three stages
    settings: tuple = ()


STAGE_SETTINGS = ("frozen", "beta", "lam", "visual_kl", "rdist", "nll")


def stage_config(cfg: "TrainConfig", stage: Stage) -> "TrainConfig":
    """The run's settings with ``stage``'s own over them (``frozen`` replaces the run's)."""
    settings = dict(stage.settings)
    unknown = set(settings) - set(STAGE_SETTINGS)
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown settings {sorted(unknown)} (per stage: {STAGE_SETTINGS})")
    if not settings:
        return cfg
    frozen = tuple(settings.pop("frozen", cfg.frozen))
    return replace(cfg, weights=replace(cfg.weights, **settings), frozen=frozen)


def set_trainable(model, frozen: tuple[str, ...]) -> None:
    """Exactly ``frozen`` does not train: its parameters stop, every other one trains again."""
    if frozen:
        freeze(model, frozen)
    else:
        for param in model.parameters():
            param.requires_grad_(True)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the config schema's (``training.*``)."""

    lr: float = default("training.lr")
    batch_size: int = default("training.batch_size")
    grad_clip: float = default("training.grad_clip")
    weight_decay: float = 0.0
    chunk_size: int = default("training.chunk_size")
    save_every: int = default("training.save_every")
    curve_every: int = 0  # > 0: a checkpoint steps/step{N} every N steps (and step0), for learning curves
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    sources: tuple[str, ...] = ("teacher", "student")
    frozen: tuple[str, ...] = ()  # parts of the student that do not train (masters.llava_kd.MODEL_PARTS)


def load_stage_rows(stage: Stage, questions: pd.DataFrame, sources: tuple[str, ...]) -> pd.DataFrame:
    """A stage's responses joined to their questions, with per-group advantages."""
    rows = pd.read_parquet(stage.responses)
    check_columns(rows, TRAIN_COLUMNS, stage.responses)
    rows = rows[rows["source"].isin(sources)].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{stage.responses}: no responses from sources {sources}")
    # a group is the responses to one question (METHOD.md §6), among the sources kept
    rows["advantage"] = rows.groupby("question_id")["r_total"].transform(lambda r: group_advantages(r.tolist()))
    missing = set(rows["question_id"]) - set(questions["id"])
    if missing:
        raise KeyError(f"{stage.responses}: question ids not in the questions file: {sorted(missing)[:5]}")
    q = questions.set_index("id")[["image", "question"]]
    return rows.join(q, on="question_id")


def batch_order(n_rows: int, batch_size: int, seed: int, stage: int, step: int) -> np.ndarray:
    """Row indices of one step: epochs of seeded permutations (a pure function, for resume)."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, stage, epoch]).permutation(n_rows)
    return perm[k * batch_size : (k + 1) * batch_size] if n_rows >= batch_size else perm


@dataclass
class VisualStates:
    """The visual tokens' final hidden states of a batch (LLaVA-KD's terms): the student's (in the
    graph) and the teacher's (no grad), ``[K, H]`` each, and each row's count of them."""

    student: torch.Tensor
    teacher: torch.Tensor
    counts: list[int]


def _step_inputs(student, teacher, s_proc, t_proc, rows: pd.DataFrame, cfg: TrainConfig, prompts: dict | None):
    """The batch, the student's response hidden states (in the graph), the teacher's (no grad;
    None without a distillation term), the per-token pi_ref log-probs and advantages, and the
    visual tokens' states (None unless a visual term is on)."""
    w = cfg.weights
    s_batch = build_batch_from_rows(s_proc, rows, prompts).to(student.device)
    s_full = sequence_hidden_states(student, s_batch)
    hidden = s_full[s_batch.predicts_response]
    visual, t_visual = None, None
    with torch.no_grad():
        t_hidden = None
        if w.lam > 0 or w.visual:
            t_batch = s_batch if t_proc is s_proc else build_batch_from_rows(t_proc, rows).to(teacher.device)
            t_full = sequence_hidden_states(teacher, t_batch)
            t_hidden = t_full[t_batch.predicts_response].to(hidden.device) if w.lam > 0 else None
            if w.visual:
                counts = visual_token_counts(s_batch)
                if visual_token_counts(t_batch) != counts:
                    raise ValueError(f"the teacher sees the images as {visual_token_counts(t_batch)} visual tokens per"
                                     f" row, the student as {counts}: LLaVA-KD's visual terms need the same tokens")
                t_visual = (t_full[t_batch.visual].to(hidden.device), counts)
    if t_visual is not None:  # the student's visual states in the graph (outside no_grad)
        visual = VisualStates(s_full[s_batch.visual], *t_visual)
    ref = torch.cat([torch.tensor(np.asarray(r, dtype=np.float32)) for r in rows["ref_logprobs"]]).to(hidden.device)
    adv = torch.cat([torch.full((length,), float(a)) for a, length in zip(rows["advantage"], s_batch.lengths)])
    adv = adv.to(hidden.device)
    if ref.shape[0] != hidden.shape[0]:
        raise ValueError(f"ref_logprobs hold {ref.shape[0]} values for {hidden.shape[0]} response tokens")
    return s_batch, hidden, t_hidden, ref, adv, visual


def _chunk_terms(s_logits, t_logits, targets, ref, adv, cfg: TrainConfig, vocab: int) -> dict[str, torch.Tensor]:
    """Per-token loss terms of one chunk of positions (:func:`masters.losses.token_losses`)."""
    logp = torch.log_softmax(s_logits[:, :vocab], dim=-1)
    logp_tok = logp.gather(1, targets[:, None]).squeeze(1)
    if t_logits is not None:
        w = cfg.weights
        jsd = token_divergence(w.divergence, t_logits, s_logits, w.skew, vocab_size=vocab, chunk_size=cfg.chunk_size)
    else:
        jsd = torch.zeros_like(logp_tok)
    return token_losses(logp_tok, ref, adv, jsd, cfg.weights)


def step_loss(student, teacher, s_proc, t_proc, rows: pd.DataFrame, cfg: TrainConfig, vocab: int,
              prompts: dict | None = None) -> dict[str, float]:
    """Forward + chunked backward of one batch; returns the detached means for the log
    (``prompts``: the student's encoded prompts, kept across steps; :func:`forward.encode_rows`)."""
    s_batch, hidden, t_hidden, ref, adv, visual = _step_inputs(student, teacher, s_proc, t_proc, rows, cfg, prompts)
    leaf = hidden.detach().requires_grad_(True)
    n = leaf.shape[0]
    sums = dict.fromkeys(("loss", "pg", "kl", "jsd"), 0.0)
    t_chunks = chunked_logits(teacher, t_hidden, cfg.chunk_size) if t_hidden is not None else None
    for part, s_logits in chunked_logits(student, leaf, cfg.chunk_size):
        t_logits = None
        if t_chunks is not None:
            with torch.no_grad():  # the frozen teacher's head: no gradient of its own
                t_logits = next(t_chunks)[1]
        parts = _chunk_terms(s_logits, t_logits, s_batch.targets[part], ref[part], adv[part], cfg, vocab)
        (parts["loss"].sum() / n).backward()
        for name in sums:
            sums[name] += float(parts[name].detach().sum())
    means = {name: value / n for name, value in sums.items()}
    if visual is None:
        hidden.backward(leaf.grad)
        return means
    v_leaf = visual.student.detach().requires_grad_(True)
    terms = _visual_backward(student, teacher, v_leaf, visual, cfg, vocab)
    torch.autograd.backward([hidden, visual.student], [leaf.grad, v_leaf.grad])
    means["loss"] += cfg.weights.visual_kl * terms["vis"] + cfg.weights.rdist * terms["rel"]  # the objective optimized
    return {**means, **terms}


def _visual_backward(student, teacher, states: torch.Tensor, visual: VisualStates, cfg: TrainConfig,
                     vocab: int) -> dict[str, float]:
    """LLaVA-KD's visual terms of one batch, each back-propagated with its weight into the student's
    visual-token ``states`` ``[K, H]`` (a leaf), as :func:`step_loss` does for the response terms:
    ``vis`` the forward KL teacher -> student at those positions, mean over the K tokens (Eq. 3; the
    output heads applied and back-propagated ``chunk_size`` positions at a time, so no K x V logits
    are kept), ``rel`` RDist, mean over the rows (Eq. 5). Returns their values; a term whose weight
    is 0 is not computed (0.0)."""
    w, k = cfg.weights, states.shape[0]
    vis = rel = 0.0
    if w.visual_kl > 0 and k:
        t_chunks = chunked_logits(teacher, visual.teacher, cfg.chunk_size)
        for _, s_logits in chunked_logits(student, states, cfg.chunk_size):
            with torch.no_grad():
                t_logits = next(t_chunks)[1]
            kl = mdist(t_logits, s_logits, vocab_size=vocab, chunk_size=cfg.chunk_size)
            (w.visual_kl * kl.sum() / k).backward()
            vis += float(kl.detach().sum()) / k
    if w.rdist > 0:
        loss = rdist(torch.split(states, visual.counts), torch.split(visual.teacher, visual.counts)).mean()
        (w.rdist * loss).backward()
        rel = float(loss.detach())
    return {"vis": vis, "rel": rel}


def padded_chunks(n: int, chunk_size: int, n_chunks: Callable[[int], int]) -> Iterator[slice]:
    """Slices of ``chunk_size`` rows over ``n`` rows, ``n_chunks(needed)`` of them: the extra ones
    (past the last row) are empty."""
    for start in range(0, n_chunks(math.ceil(n / chunk_size)) * chunk_size, chunk_size):
        yield slice(min(start, n), min(start + chunk_size, n))


def step_loss_checkpointed(student, teacher, s_proc, t_proc, rows: pd.DataFrame, cfg: TrainConfig, vocab: int,
                           denominator: float, prompts: dict | None = None,
                           n_chunks: Callable[[int], int] = lambda n: n,
                           visual_denominators: Callable[[int, int], tuple[float, float]] = lambda k, r: (k, r),
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of :func:`step_loss` as one differentiable scalar, ``sum of l_t / denominator``
    (+ LLaVA-KD's visual terms, each sum over its visual tokens / rows divided by
    ``visual_denominators(K, rows)``: by default this batch's own, the means :func:`step_loss`
    takes), for engines that need a single backward per step (DeepSpeed ZeRO-3 reduces each
    parameter's gradient once). Each chunk's logits are recomputed in the backward pass
    (activation checkpointing), so no batch x sequence x vocabulary tensor is kept either. Also
    returns the detached sums over this batch of (loss, pg, kl, jsd) per response token and of
    (vis, rel) per visual token and per row (0 without those terms), for the log.

    ``n_chunks(needed)``: how many chunks to run, at least the ``needed`` ones (the extra ones are
    empty). Under ZeRO-3 each call of an output head gathers its weight across the processes, so
    every process must call it equally often although their batches differ in response tokens."""
    from torch.utils.checkpoint import checkpoint

    s_batch, hidden, t_hidden, ref, adv, visual = _step_inputs(student, teacher, s_proc, t_proc, rows, cfg, prompts)
    s_head = student.get_output_embeddings()
    t_head = teacher.get_output_embeddings() if (t_hidden is not None or visual is not None) else None
    total, sums = hidden.new_zeros((), dtype=torch.float32), torch.zeros(6)
    n = hidden.shape[0]
    for part in padded_chunks(n, cfg.chunk_size, n_chunks):

        def chunk(h, part=part):
            t_logits = None
            if t_hidden is not None:
                with torch.no_grad():
                    t_logits = t_head(t_hidden[part]).float()
            parts = _chunk_terms(s_head(h).float(), t_logits, s_batch.targets[part], ref[part], adv[part], cfg, vocab)
            return parts["loss"].sum(), torch.stack([parts[k].detach().sum() for k in ("loss", "pg", "kl", "jsd")])

        loss, stats = checkpoint(chunk, hidden[part], use_reentrant=False)
        total = total + loss
        sums[:4] += stats.cpu()
    total = total / denominator
    if visual is not None:
        w, k = cfg.weights, visual.student.shape[0]
        k_den, rows_den = visual_denominators(k, len(visual.counts))
        if w.visual_kl > 0:  # Eq. 3 at the visual tokens, chunked and recomputed as the response terms
            for part in padded_chunks(k, cfg.chunk_size, n_chunks):

                def visual_chunk(h, part=part):
                    with torch.no_grad():
                        t_logits = t_head(visual.teacher[part]).float()
                    return mdist(t_logits, s_head(h).float(), vocab_size=vocab, chunk_size=cfg.chunk_size).sum()

                kl = checkpoint(visual_chunk, visual.student[part], use_reentrant=False)
                total = total + w.visual_kl * kl / k_den
                sums[4] += float(kl.detach())
        if w.rdist > 0:  # Eq. 5, one value per row
            rel = rdist(torch.split(visual.student, visual.counts), torch.split(visual.teacher, visual.counts))
            total = total + w.rdist * rel.sum() / rows_den
            sums[5] += float(rel.detach().sum())
    return total, sums


class TorchBackend:
    """One process (the CPU, or one GPU): AdamW, :func:`step_loss`'s two-phase backward. On a
    GPU the student and each stage's teacher live there in fp32."""

    is_main = True

    def __init__(self, device: str = "cpu"):
        self.device = device

    def load(self, path: str, cfg: TrainConfig):
        """``(model, processor)`` of a checkpoint, whole in this process (fp32, on the CPU until
        :meth:`prepare` / :meth:`teacher` place it)."""
        return load_checkpoint(path)

    def prepare(self, student, cfg: TrainConfig):
        student = student.to(self.device)
        self.model, self.cfg = student, cfg
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return student

    def teacher(self, teacher):
        return teacher.to(self.device)

    def configure(self, cfg: TrainConfig) -> None:
        """A stage's own settings (:func:`stage_config`) for the steps that follow."""
        self.cfg = cfg

    def step(self, teacher, s_proc, t_proc, batch: pd.DataFrame, vocab: int, prompts: dict) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        terms = step_loss(self.model, teacher, s_proc, t_proc, batch, self.cfg, vocab, prompts)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return terms

    def save_state(self, state: dict, out: Path) -> None:
        save_state(self.model, self.optimizer, state, out)

    def load_state(self, out: Path) -> dict | None:
        return load_state(self.model, self.optimizer, out)

    def save_checkpoint(self, processor, out: Path) -> None:
        save_checkpoint(self.model, processor, out)

    def barrier(self) -> None:
        pass


def save_state(model, optimizer, state: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    replace_state(tmp, out)


def _aside(out: Path) -> Path:
    return out.with_name(out.name + ".old")


def replace_state(tmp: Path, out: Path) -> None:
    """Put the complete state ``tmp`` at ``out`` so that a kill at any instant leaves a complete
    state to resume from: the old state is renamed aside and the new one into place (renames are
    atomic), and only then is the old one deleted (a deletion is not: a state half deleted,
    its trainer_state.json still there, must never be what a resume finds)."""
    aside = _aside(out)
    shutil.rmtree(aside, ignore_errors=True)  # settle_state ran first: never the only complete state
    if out.exists():
        out.rename(aside)
    tmp.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def settle_state(out: Path) -> None:
    """Finish a :func:`replace_state` that a kill interrupted, before anything is read or saved:
    afterwards ``out`` is a complete state or there is none. A new state complete in ``out.tmp``
    (trainer_state.json is written last) goes into place; the one set aside comes back when
    it is the only one; what is left is deleted."""
    tmp, aside = out.with_name(out.name + ".tmp"), _aside(out)
    if not out.exists():
        if (tmp / "trainer_state.json").is_file():
            tmp.rename(out)
        elif aside.exists():
            aside.rename(out)
    for leftover in (tmp, aside):
        shutil.rmtree(leftover, ignore_errors=True)


def complete_state(out: Path) -> Path | None:
    """The saved state to resume from (after :func:`settle_state`): ``out``, or None."""
    return out if (out / "trainer_state.json").is_file() else None


def load_state(model, optimizer, out: Path) -> dict | None:
    out = complete_state(out)
    if out is None:
        return None
    model.load_state_dict(load_file(out / "model.safetensors"))
    optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(out / "rng.pt", weights_only=True))
    return json.loads((out / "trainer_state.json").read_text())


def fingerprint(student_dir: str, stages: list[Stage], cfg: TrainConfig) -> str:
    """Hash of what a run's result depends on (not the file contents: a workflow reruns on those)."""
    from dataclasses import asdict

    config = asdict(cfg)
    # a run of none of the later settings keeps the fingerprint it had before them: it still resumes
    if cfg.weights.divergence == "jsd":
        del config["weights"]["divergence"], config["weights"]["skew"]
    for name in ("visual_kl", "rdist", "nll"):
        if not config["weights"][name]:
            del config["weights"][name]
    if not cfg.frozen:
        del config["frozen"]
    stage_specs = [{k: v for k, v in asdict(s).items() if k != "settings" or v} for s in stages]  # (as above)
    return checkpoint_fingerprint({"student": str(student_dir), "stages": stage_specs, "config": config})


def partial_dir(out_dir: str | Path) -> Path:
    """Where a run writes until it is complete (see the module docstring)."""
    out = Path(out_dir)
    return out.with_name(out.name + ".partial")


def train(student_dir: str, stages: list[Stage], questions: pd.DataFrame, cfg: TrainConfig, out_dir: str,
          max_steps: int | None = None, progress: bool = True, backend=None) -> pd.DataFrame:
    """Train π_θ (initialised from ``student_dir`` = π_ref) through ``stages``; see module doc.

    ``backend``: :class:`TorchBackend` (default) or ``masters.zero.DeepSpeedBackend`` (one
    process per GPU; only the main process writes files). ``max_steps`` stops after that many
    steps in this call (to test resuming)."""
    backend = backend or TorchBackend()
    final_out, out = Path(out_dir), partial_dir(out_dir)
    student, s_proc = backend.load(student_dir, cfg)
    freeze(student, cfg.frozen)
    vocab = len(s_proc.tokenizer)
    torch.manual_seed(cfg.seed)
    key = fingerprint(student_dir, stages, cfg)
    if backend.is_main:
        settle_state(out / "resume")
    backend.barrier()
    saved = complete_state(out / "resume")
    previous_key = json.loads((saved / "trainer_state.json").read_text()).get("fingerprint") if saved else None
    if backend.is_main:
        if previous_key is not None and previous_key != key:
            print(f"{out}: a partial run of other settings; starting afresh")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    backend.barrier()
    student = backend.prepare(student, cfg)
    state = (backend.load_state(out / "resume") if previous_key == key else None) or {"stage": 0, "step": 0}
    if state["step"] and backend.is_main:
        print(f"{out}: resuming at stage {state['stage']}, step {state['step']}")
    log_path = out / "train_log.csv"
    records: list[dict] = []
    if log_path.is_file() and state["step"] > 0:
        previous = pd.read_csv(log_path)
        records = previous[previous["step"] <= state["step"]].to_dict("records")

    def log_frame() -> pd.DataFrame:
        return pd.DataFrame(records, columns=LOG_COLUMNS)

    def write_log() -> None:  # complete or not at all: a kill mid-write must not leave a torn log to resume from
        if backend.is_main:
            tmp = log_path.with_name(log_path.name + ".tmp")
            log_frame().to_csv(tmp, index=False)
            tmp.replace(log_path)
    global_step, done = state["step"], 0
    first_step = sum(s.steps for s in stages[: state["stage"]])
    if cfg.curve_every and global_step == 0:
        backend.save_checkpoint(s_proc, out / "steps/step0")  # pi_ref, the curve's first point
    student.train()
    prompts: dict = {}  # each question's prompt encoded once (a question recurs in every epoch and stage)
    for k in range(state["stage"], len(stages)):
        stage = stages[k]
        if any(st.settings for st in stages):  # this stage's own parts and loss terms (or the run's again)
            stage_cfg = stage_config(cfg, stage)
            set_trainable(student, stage_cfg.frozen)
            backend.configure(stage_cfg)
        teacher, t_proc = backend.load(stage.teacher, cfg)
        teacher.eval().requires_grad_(False)
        check_same_tokenizer(s_proc, t_proc)
        if same_encoding(s_proc, t_proc):
            t_proc = s_proc  # one family: the student's batch serves the teacher (step_loss)
        teacher = backend.teacher(teacher)
        rows = load_stage_rows(stage, questions, cfg.sources)
        for local in tqdm(range(global_step - first_step, stage.steps), desc=f"stage {k} ({stage.name})",
                          disable=not (progress and backend.is_main)):
            if max_steps is not None and done >= max_steps:
                return log_frame()
            batch = rows.iloc[batch_order(len(rows), cfg.batch_size, cfg.seed, k, local)]
            terms = backend.step(teacher, s_proc, t_proc, batch, vocab, prompts)
            global_step += 1
            done += 1
            record = {"step": global_step, "stage": k, "teacher": stage.name, "ratio": stage.ratio, **terms,
                      "r_acc": float(batch["r_acc"].mean()) if "r_acc" in batch else math.nan,
                      "r_distill": float(batch["r_distill"].mean()) if "r_distill" in batch else math.nan,
                      "r_total": float(batch["r_total"].mean()), "lr": cfg.lr}
            records.append(record)
            if cfg.curve_every and global_step % cfg.curve_every == 0:
                backend.save_checkpoint(s_proc, out / f"steps/step{global_step}")
            if global_step % cfg.save_every == 0:
                write_log()
                backend.save_state({"stage": k, "step": global_step, "fingerprint": key}, out / "resume")
        first_step += stage.steps
        student.eval()
        backend.save_checkpoint(s_proc, out / f"stage{k}")
        student.train()
        write_log()
        backend.save_state({"stage": k + 1, "step": global_step, "fingerprint": key}, out / "resume")
        del teacher
    student.eval()
    backend.save_checkpoint(s_proc, out / "final")
    backend.barrier()
    if backend.is_main:
        # the state goes first, renamed out of the way (a half-deleted one must never be resumed)
        done_state = out / "resume.done"
        if (out / "resume").exists():
            (out / "resume").rename(done_state)
        for leftover in (done_state, out / "resume.tmp", out / "resume.old"):
            shutil.rmtree(leftover, ignore_errors=True)
        if final_out.exists():
            shutil.rmtree(final_out)
        out.rename(final_out)
    backend.barrier()
    return log_frame()
