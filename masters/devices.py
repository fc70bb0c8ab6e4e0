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


def placement(gpus: int, visible: int | None = None) -> tuple[str, str]:
    """Where a job's models run: ``("cuda", "bfloat16")`` with one GPU, ``("auto", "bfloat16")``
    with several (``device_map="auto"``: a 72B teacher's 147 GB of bf16 weights spread over the
    job's GPUs), else ``("cpu", "float32")``. :func:`require_gpus` checks the count first.
    Training keeps fp32 weights on one GPU (torch backend; DeepSpeed runs bf16 with fp32 master
    weights itself, one process per GPU)."""
    seen = visible_gpus() if visible is None else visible
    if gpus <= 0 or seen <= 0:
        return "cpu", "float32"
    return ("auto" if gpus > 1 else "cuda"), "bfloat16"


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
