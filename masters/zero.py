"""DeepSpeed ZeRO-3 training (``training.backend: deepspeed``; PAPER_SCALE.md, "DeepSpeed").

``masters train --backend deepspeed --processes N`` relaunches itself under ``torchrun`` with
one process per GPU of the job (N processes with gloo on a CPU machine, for the tests); each
process runs the same loop as the single-process trainer (:func:`masters.training.train`) with
:class:`DeepSpeedBackend`:

* the student and its AdamW state are sharded over the processes (ZeRO stage 3); the frozen
  teacher of each stage is sharded too, as an engine without an optimizer (as TRL's GKD
  trainer prepares its teacher);
* every step takes the same global batch of ``batch_size`` responses as the single-process
  trainer and gives each process every N-th row; the loss is normalized by the global number
  of response tokens, so the update is the single-process one (tested to 1e-4 over 10 steps);
* the chunked loss is unchanged (:func:`masters.training.step_loss_checkpointed`: one backward
  per step, each chunk's logits recomputed in it, never a batch x sequence x vocabulary tensor);
* stage checkpoints are consolidated stock HF checkpoints (safetensors, loadable by the Auto
  classes) written by the main process;
* every process runs as many loss chunks as the one with the most response tokens (ZeRO-3
  gathers the output head's weight at each call: unequal counts break the step);
* resumable: the state is DeepSpeed's own sharded checkpoint (:meth:`DeepSpeedBackend.save_state`,
  same fingerprint rule as the single-process trainer). Its shards are torch pickles that
  DeepSpeed reads with ``weights_only=False``: read back only from the run's own directory.

Nothing here is imported unless the backend is asked for; ``deepspeed`` is an optional
dependency (the test extra installs it with ``DS_BUILD_OPS=0``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch


FIXED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization.stage")


def ds_config(batch_size: int, world: int, grad_clip: float, bf16: bool, extra: dict | None = None) -> dict:
    """The ZeRO-3 config of one training run: the global batch split evenly over the processes;
    ``extra`` (config ``training.deepspeed``) merged over it, nested dicts key by key."""
    if batch_size % world:
        raise ValueError(f"training.batch_size {batch_size} must be a multiple of the {world} processes")
    config = {"train_batch_size": batch_size, "train_micro_batch_size_per_gpu": batch_size // world,
              "gradient_accumulation_steps": 1, "gradient_clipping": grad_clip,
              "zero_optimization": {"stage": 3, "contiguous_gradients": True,
                                    "stage3_gather_16bit_weights_on_model_save": True},
              "bf16": {"enabled": bf16}, "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}
    return _merge(config, extra or {}, "")


def _merge(base: dict, extra: dict, where: str) -> dict:
    out = dict(base)
    for key, value in extra.items():
        name = where + key
        if name in FIXED:
            raise ValueError(f"training.deepspeed.{name}: set by the workflow (training.batch_size, ZeRO stage 3)")
        out[key] = _merge(out[key], value, name + ".") if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def launch_command(argv: list[str], processes: int) -> list[str]:
    """``torchrun`` running this same ``masters`` command once per process."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "masters.cli", *argv]


def relaunch(argv: list[str], processes: int, gpus: int) -> int:
    """Run ``masters <argv>`` under torchrun (the processes inherit the environment)."""
    import subprocess

    env = dict(os.environ)
    if gpus == 0:
        env.setdefault("DS_ACCELERATOR", "cpu")
    return subprocess.call(launch_command(argv, processes), env=env)


class DeepSpeedBackend:
    """One process of a ZeRO-3 run (see the module docstring)."""

    def __init__(self, gpus: int, extra_config: dict | None = None):
        import deepspeed
        import torch.distributed as dist

        self.deepspeed, self.dist = deepspeed, dist
        deepspeed.init_distributed(dist_backend="nccl" if gpus else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpus else torch.device("cpu")
        if gpus:
            torch.cuda.set_device(self.device)
        self.bf16 = bool(gpus)  # bf16 on GPUs (the paper's A100s); fp32 on the CPU
        self.extra = extra_config or {}

    def load(self, path: str, cfg):
        """``(model, processor)`` of a checkpoint built partitioned: with transformers'
        ``HfDeepSpeedConfig`` alive, ``from_pretrained`` constructs the model under
        ``deepspeed.zero.Init`` and loads the weights into the partitions, so no process ever holds
        a whole copy (a 72B teacher in fp32 is 290 GB; eight of them would not fit the node)."""
        from transformers.integrations import HfDeepSpeedConfig

        from masters.checkpoints import load_checkpoint

        # transformers keeps only a weak reference: the object must live while the model loads
        hf_config = HfDeepSpeedConfig(ds_config(cfg.batch_size, self.world, cfg.grad_clip, self.bf16, self.extra))
        try:
            model, processor = load_checkpoint(path, dtype=torch.bfloat16 if self.bf16 else torch.float32, device=None)
        finally:  # the rest of the run is as before: DeepSpeed's engines, not transformers, hold the partitions
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            del hf_config
        params = list(model.parameters())
        held = sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor"))
        total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        if self.is_main:
            print(f"{path}: loaded partitioned over {self.world} processes (ZeRO-3 zero.Init):"
                  f" {held:,} of {total:,} parameters held by this one")
        return model, processor

    def prepare(self, student, cfg):
        self.cfg = cfg
        config = ds_config(cfg.batch_size, self.world, cfg.grad_clip, self.bf16, self.extra)
        # the trainable parameters only (``training.frozen`` parts are frozen before): ZeRO-3 partitions
        # what the optimizer steps, and a frozen part never gets a gradient (AdamW would skip it too)
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        self.engine, *_ = self.deepspeed.initialize(model=student, optimizer=optimizer, config=config)
        return self.engine.module

    def teacher(self, teacher):
        config = ds_config(self.cfg.batch_size, self.world, self.cfg.grad_clip, self.bf16, self.extra)
        config.pop("gradient_clipping")
        engine, *_ = self.deepspeed.initialize(model=teacher, config=config)
        engine.eval()
        return engine.module

    def _all_reduce(self, values: torch.Tensor, op=None) -> torch.Tensor:
        """``values`` reduced over the processes (sum by default), on ``values``' own device. The
        collective runs on this process's device: NCCL takes CUDA tensors only (gloo, CPU ones)."""
        out = values.to(self.device, copy=True)
        self.dist.all_reduce(out, op=self.dist.ReduceOp.SUM if op is None else op)
        return out.to(values.device)

    def _most(self, count: int) -> int:
        """The largest ``count`` over the processes (each runs that many loss chunks)."""
        return int(self._all_reduce(torch.tensor([count]), self.dist.ReduceOp.MAX))

    def _all_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(values)

    def step(self, teacher, s_proc, t_proc, batch: pd.DataFrame, vocab: int, prompts: dict) -> dict[str, float]:
        from masters.training import step_loss_checkpointed

        mine = batch.iloc[self.rank :: self.world]
        tokens = self._all_sum(torch.tensor([float(sum(len(t) for t in mine["token_ids"]))]))[0]
        visual = torch.zeros(2)  # the global visual tokens and rows (LLaVA-KD's terms' means)

        def visual_denominators(k: int, rows: int) -> tuple[float, float]:
            visual[:] = self._all_sum(torch.tensor([float(k), float(rows)]))
            return float(visual[0]) / self.world, float(visual[1]) / self.world

        # DeepSpeed averages gradients over the processes: sum/tokens x world = the global mean's
        loss, sums = step_loss_checkpointed(self.engine.module, teacher, s_proc, t_proc, mine, self.cfg, vocab,
                                            denominator=float(tokens) / self.world, prompts=prompts,
                                            n_chunks=self._most, visual_denominators=visual_denominators)
        self.engine.backward(loss)
        self.engine.step()
        sums = self._all_sum(sums)
        terms = dict(zip(("loss", "pg", "kl", "jsd"), map(float, sums[:4] / tokens)))
        if self.cfg.weights.visual:  # as step_loss logs them: means, and the objective with them
            w = self.cfg.weights
            terms["vis"] = float(sums[4] / visual[0]) if visual[0] else 0.0
            terms["rel"] = float(sums[5] / visual[1]) if visual[1] else 0.0
            terms["loss"] += w.visual_kl * terms["vis"] + w.rdist * terms["rel"]
        return terms

    def configure(self, cfg) -> None:
        if cfg != self.cfg:
            raise NotImplementedError("per-stage training settings run with the torch backend")

    def save_state(self, state: dict, out: Path) -> None:
        """DeepSpeed's own sharded checkpoint (every process writes its shards), made complete
        under ``out.tmp`` and then renamed, as the single-process trainer's state is."""
        tmp = out.with_name(out.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        self.engine.save_checkpoint(str(tmp), tag="state", client_state={"rng": torch.get_rng_state()})
        self.barrier()
        if self.is_main:
            from masters.training import replace_state

            (tmp / "trainer_state.json").write_text(json.dumps(state))  # last: the state is complete
            replace_state(tmp, out)
        self.barrier()

    def load_state(self, out: Path) -> dict | None:
        from masters.training import complete_state

        where = complete_state(out)
        if where is None:
            return None
        _, client = self.engine.load_checkpoint(str(where), tag="state")
        torch.set_rng_state(client["rng"])
        return json.loads((where / "trainer_state.json").read_text())

    def save_checkpoint(self, processor, out: Path) -> None:
        """A consolidated stock HF checkpoint (collective: every process gathers its shards)."""
        state = self.engine._zero3_consolidated_16bit_state_dict()
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            self.engine.module.save_pretrained(out, state_dict=state, safe_serialization=True)
            processor.save_pretrained(out)
        self.barrier()

    def barrier(self) -> None:
        self.dist.barrier()
