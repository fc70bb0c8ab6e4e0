"""Does this job see the GPUs it asked for? Checked before any work by every command that runs a
model (``--gpus N``, from the rule family's ``resources.<family>.gpu``).

A scheduler can hand a job fewer GPUs than requested (snakemake-executor-plugin-slurm has an open
report of a ``gpu=2`` job seeing one); a multi-GPU launch on too few devices fails late, or
silently runs on fewer. So: fewer visible CUDA devices than requested is a clear error up front.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_SCHEDULER_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS",
                   "SLURM_STEP_GPUS", "SLURM_GPUS")


class GPUsMissing(SystemExit):
    """Raised (as a non-zero exit) when a job sees fewer GPUs than it asked for."""


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placement(gpus: int) -> tuple[str, str]:
    """Where a job's models run: ``("cuda", "bfloat16")`` when it asked for GPUs (and sees them:
    :func:`require_gpus` checks first), else ``("cpu", "float32")``. Training keeps fp32
    weights on a GPU (torch backend; DeepSpeed runs bf16 with fp32 master weights itself)."""
    return ("cuda", "bfloat16") if gpus > 0 and visible_gpus() > 0 else ("cpu", "float32")


def require_gpus(requested: int, command: str, *, visible: int | None = None,
                 environ: Mapping[str, str] = os.environ) -> int:
    """Return how many GPUs the job will use (``requested``), or raise ``GPUsMissing``.

    ``requested`` 0 is a CPU job: nothing to check. More visible GPUs than requested (a local
    run on a multi-GPU box) is fine: the job uses the first ``requested``.
    """
    if requested <= 0:
        return 0
    seen = visible_gpus() if visible is None else visible
    if seen >= requested:
        return requested
    context = ", ".join(f"{k}={environ[k]}" for k in _SCHEDULER_VARS if k in environ) or "no scheduler variables set"
    raise GPUsMissing(
        f"masters {command}: this job asked for {requested} GPU(s) (--gpus, from resources.<family>.gpu)"
        f" but CUDA sees {seen} ({context}). The scheduler did not give the job the GPUs it requested;"
        " not starting. Check the job's allocation (scontrol show job $SLURM_JOB_ID) and the GPU request"
        " in the rule family's resources.")
