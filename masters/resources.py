"""What each job asks the scheduler for: the config's ``resources:`` section, per rule family.

``resources.default`` holds every field; a family entry overrides some of them for the rules of
that family. Rules read nothing else (``rules/common.smk`` turns a family into the ``threads:``
and ``resources:`` of a rule), so changing a scale means changing the config, never a rule.

=============== ===================================================================
family          rules (jobs)
=============== ===================================================================
``default``     light jobs: world data, tokenizer, training questions, the rule judge, ``reward``
``sft``         ``world_sft`` (the tiny world's models)
``mask``        ``mask`` (streaming, CPU)
``generate``    ``generate`` (pre-generation; vLLM at paper scale)
``judge``       ``judge`` with an LLM judge
``score``       ``score`` (teacher and student forward passes; ``reward`` then runs with ``default``)
``train``       ``train`` (DeepSpeed ZeRO-3 at paper scale)
``evaluate``    ``evaluate``
=============== ===================================================================

Fields and what they become (snakemake-executor-plugin-slurm maps the resources to ``sbatch``):
``cpus`` → the rule's threads → ``--cpus-per-task`` (and the jobs' torch threads);
``mem_mb`` → ``--mem``; ``runtime`` (minutes) → ``-t``; ``gpu`` (+ ``gpu_model``) →
``--gpus=[model:]N``, or with ``gpu_flag: gres`` → ``--gres=gpu[:model]:N`` (clusters that take
GPUs only as generic resources); ``slurm_partition`` → ``-p``; ``slurm_account`` → ``-A``;
``slurm_extra`` → appended as is. ``job_gpus`` (always present) is the GPU count the job's command
checks (``--gpus {resources.job_gpus}``), whichever flag carries the request. Partition and
account left null are taken from the submitting shell's ``SBATCH_PARTITION`` /
``SBATCH_ACCOUNT``; unset there too, they are not passed (SLURM's default partition; the plugin
guesses the account).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

FAMILIES = ("default", "sft", "mask", "generate", "judge", "score", "train", "evaluate", "evaluate_teacher",
            "benchmark_judge")
# a family whose entry is merged over another's (then over `default`)
PARENT = {"evaluate_teacher": "evaluate"}
REQUIRED = ("cpus", "mem_mb", "runtime", "gpu")
RESOURCE_KEYS = ("mem_mb", "runtime", "job_gpus", "gpu", "gpu_model", "gres", "slurm_partition", "slurm_account",
                 "slurm_extra")
GPU_FLAGS = ("gpus", "gres")
ENV_FALLBACK = {"slurm_partition": "SBATCH_PARTITION", "slurm_account": "SBATCH_ACCOUNT"}

# sbatch flags the plugin sets (or reserves) itself: its validation rejects them in slurm_extra.
# Checked here first, so that the error names the config key before any job.
MANAGED_FLAGS = ("--job-name", "-J", "--output", "-o", "--error", "-e", "--parsable", "--export", "--comment",
                 "--workdir", "-D", "--account", "-A", "--partition", "-p", "--mem", "--mem-per-cpu", "--ntasks",
                 "-n", "--ntasks-per-gpu", "--cpus-per-task", "-c", "--cpus-per-gpu", "--time", "-t",
                 "--constraint", "-C", "--qos", "--nodes", "-N", "--clusters", "--gres", "--gpus", "-G")


class ResourcesError(ValueError):
    """A bad `resources:` entry; the message names the config key."""


@dataclass(frozen=True)
class JobResources:
    """A rule family's request: Snakemake ``threads`` and ``resources`` (plugin names)."""

    threads: int
    resources: dict


def family(section: Mapping, name: str, environ: Mapping[str, str] = os.environ) -> JobResources:
    """The request of family ``name``: its entry of ``section`` merged over ``section['default']``.

    >>> family({"default": {"cpus": 1, "mem_mb": 500, "runtime": 10, "gpu": 0},
    ...         "train": {"gpu": 2, "gpu_model": "h100"}}, "train", environ={}).resources
    {'mem_mb': 500, 'runtime': 10, 'job_gpus': 2, 'gpu': 2, 'gpu_model': 'h100'}
    """
    if name not in FAMILIES:
        raise ResourcesError(f"invalid config: key resources.{name}: unknown family (one of {', '.join(FAMILIES)})")
    base = dict(section.get("default") or {})
    missing = [k for k in REQUIRED if base.get(k) is None]
    if missing:
        raise ResourcesError(f"invalid config: key resources.default: missing {', '.join(missing)}")
    merged = dict(base)
    for entry in filter(None, (PARENT.get(name), name)):  # the parent's entry, then the family's own
        merged.update({k: v for k, v in (section.get(entry) or {}).items() if v is not None})
    for key, variable in ENV_FALLBACK.items():
        if merged.get(key) is None and environ.get(variable):
            merged[key] = environ[variable]
    merged["gpu_flag"] = merged.get("gpu_flag") or "gpus"
    where = f"resources.{name}" if name in section and section[name] else "resources.default"
    _check(merged, where)
    gpus, model = int(merged["gpu"]), merged.get("gpu_model")
    out = {"mem_mb": int(merged["mem_mb"]), "runtime": int(merged["runtime"]), "job_gpus": gpus}
    if merged["gpu_flag"] == "gres":
        if gpus > 0:
            out["gres"] = f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"
    else:
        out["gpu"] = gpus
        if gpus > 0 and model:
            out["gpu_model"] = str(model)
    for key in ("slurm_partition", "slurm_account", "slurm_extra"):
        if merged.get(key):
            out[key] = str(merged[key])
    return JobResources(threads=int(merged["cpus"]), resources=out)


def _check(merged: dict, where: str) -> None:
    for key in ("cpus", "mem_mb", "runtime"):
        if not isinstance(merged[key], int) or isinstance(merged[key], bool) or merged[key] < 1:
            raise ResourcesError(f"invalid config: key {where}.{key}: {merged[key]!r} is not a positive integer")
    if not isinstance(merged["gpu"], int) or isinstance(merged["gpu"], bool) or merged["gpu"] < 0:
        raise ResourcesError(f"invalid config: key {where}.gpu: {merged['gpu']!r} is not a GPU count (0 or more)")
    if merged["gpu_flag"] not in GPU_FLAGS:
        raise ResourcesError(f"invalid config: key {where}.gpu_flag: {merged['gpu_flag']!r} is not one of {GPU_FLAGS}")
    extra = merged.get("slurm_extra") or ""
    for token in shlex.split(extra):
        flag = token.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise ResourcesError(
                f"invalid config: key {where}.slurm_extra: {flag} is set by the SLURM plugin from the other"
                " resources (cpus, mem_mb, runtime, gpu, gpu_model, slurm_partition, slurm_account): set it there")


def all_families(section: Mapping, environ: Mapping[str, str] = os.environ) -> dict[str, JobResources]:
    """Every family's request, checked (so a bad entry fails before any job)."""
    unknown = [k for k in section if k not in FAMILIES]
    if unknown:
        raise ResourcesError(f"invalid config: key resources.{unknown[0]}: unknown family (one of {', '.join(FAMILIES)})")
    return {name: family(section, name, environ) for name in FAMILIES}
