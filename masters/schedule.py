"""Progressive masking schedule (METHOD.md §2, paper Eq. 3).

Eq. 3 lowers the teacher's masking ratio linearly over training:

    r_k = r_max − k·s,   k = 0 .. M−1,   M = round(r_max / s) + 1,

so training starts from the most heavily masked teacher (r_max) and ends with the full
teacher (r = 0). Iterations are 0-indexed, i = 0 .. I−1, and iteration i belongs to stage

    k(i) = min(floor(i·M / I), M − 1).

(The paper writes the 1-indexed form, which gives r = −s at i = I; the clamp is the fix.)
Each r_k is rounded to 6 decimals and the last one is exactly 0.0, so ``0.3 / 0.1`` gives
``[0.3, 0.2, 0.1, 0.0]`` and never ``-0.0`` or ``5.5e-17``.

A *teacher plan* (e.g. the mid teacher, then the large one) is an ordered list of teachers,
each with its own r_max and s and a share of the iterations; :func:`plan_stages` expands
it into the ordered list of :class:`TeacherStage` the trainer runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

#: Tolerance for "r_max is a multiple of step".
MULTIPLE_TOL = 1e-6
DECIMALS = 6


def _num_stages(r_max: float, step: float | None) -> int:
    """M of Eq. 3, after validating ``r_max`` and ``step``."""
    if not isinstance(r_max, (int, float)) or isinstance(r_max, bool) or not math.isfinite(r_max):
        raise ValueError(f"r_max must be a finite number, got {r_max!r}")
    if r_max < 0:
        raise ValueError(f"r_max must be >= 0, got {r_max}")
    if r_max >= 1:
        raise ValueError(f"r_max must be < 1 (a ratio of weights to zero), got {r_max}")
    if r_max == 0:
        return 1
    if step is None or isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        raise ValueError(f"step must be a finite number when r_max > 0, got {step!r}")
    if step <= 0:
        raise ValueError(f"step must be > 0 when r_max > 0, got step={step}")
    if step > r_max + MULTIPLE_TOL:
        raise ValueError(f"step must be <= r_max, got step={step} > r_max={r_max}")
    n = round(r_max / step)
    if abs(r_max - n * step) > MULTIPLE_TOL:
        raise ValueError(f"r_max must be a multiple of step, got r_max={r_max}, step={step}")
    return n + 1


def ratio_str(r: float) -> str:
    """A masking ratio as it names its files, exactly: two decimals at least, up to the
    schedule's six (``0.2`` -> ``"0.20"``, ``0.175`` -> ``"0.175"``), never ``"-0.00"``.
    A ratio with more decimals has no name: ``ValueError``."""
    r = float(r) + 0.0
    if round(r, DECIMALS) != r:
        raise ValueError(f"masking ratio {r!r} has more than {DECIMALS} decimals")
    whole, frac = f"{r:.{DECIMALS}f}".split(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def ratios(r_max: float, step: float) -> list[float]:
    """The masking ratios of Eq. 3, largest first: ``[r_max, r_max − s, …, 0.0]``.

    ``r_max == 0`` gives ``[0.0]`` (plain distillation from the full teacher; ``step`` is
    ignored). Raises ``ValueError`` for r_max outside [0, 1), step <= 0 or > r_max, or an
    r_max that is not a multiple of step (within 1e-6).
    """
    m = _num_stages(r_max, step)
    # r_k >= 2s - 1e-6 > 0 before the last stage, so only the last needs care: exactly 0.0
    return [round(r_max - k * step, DECIMALS) for k in range(m - 1)] + [0.0]


def stage_of(i: int, num_iters: int, r_max: float, step: float) -> int:
    """Stage k(i) = min(floor(i·M/I), M−1) of 0-indexed iteration ``i`` of ``num_iters``."""
    if isinstance(num_iters, bool) or int(num_iters) != num_iters or num_iters <= 0:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}")
    if isinstance(i, bool) or int(i) != i or not 0 <= i < num_iters:
        raise ValueError(f"iteration i must be an integer in [0, {num_iters}), got {i!r}")
    m = _num_stages(r_max, step)
    return min(int(i) * m // int(num_iters), m - 1)


def stage_iters(num_iters: int, r_max: float, step: float) -> list[int]:
    """How many of ``num_iters`` iterations each stage k gets under :func:`stage_of`."""
    if isinstance(num_iters, bool) or int(num_iters) != num_iters or num_iters < 0:
        raise ValueError(f"num_iters must be a non-negative integer, got {num_iters!r}")
    m = _num_stages(r_max, step)
    num_iters = int(num_iters)
    # First iteration of stage k is ceil(k·I/M); the clamp never binds for i < I.
    starts = [-(-k * num_iters // m) for k in range(m)] + [num_iters]
    return [starts[k + 1] - starts[k] for k in range(m)]


@dataclass(frozen=True)
class TeacherStage:
    """One stage of a teacher plan: train against ``teacher`` masked at ``ratio`` for
    ``iters`` iterations. ``stage`` is the k of Eq. 3 within that teacher's schedule
    (0 = the most masked, r_max); the position in the plan's list is the global order."""

    teacher: str
    ratio: float
    stage: int
    iters: int


def split_iters(shares: Sequence[float], num_iters: int) -> list[int]:
    """Split ``num_iters`` by ``shares`` into integers that sum exactly to ``num_iters``.

    Largest-remainder method with exact rational arithmetic; ties go to the earlier entry.
    """
    if not shares:
        raise ValueError("shares must not be empty")
    fr = []
    for s in shares:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"every share must be a positive number, got {s!r}")
        fr.append(Fraction(s))
    total = sum(fr)
    exact = [f * num_iters / total for f in fr]
    base = [math.floor(e) for e in exact]
    left = num_iters - sum(base)
    order = sorted(range(len(fr)), key=lambda j: (-(exact[j] - base[j]), j))
    for j in order[:left]:
        base[j] += 1
    return base


def plan_stages(plan: Sequence[Mapping[str, Any]], num_iters: int) -> list[TeacherStage]:
    """Expand a teacher plan into the ordered stages the trainer runs.

    ``plan`` is ordered, e.g. ``[{"teacher": "M", "r_max": 0.2, "step": 0.05, "share": 1},
    {"teacher": "L", "r_max": 0.2, "step": 0.05}]``. ``share`` is optional (default: equal
    shares); ``step`` may be left out when ``r_max`` is 0. Other keys are ignored. The
    ``num_iters`` iterations are split between teachers by share (:func:`split_iters`),
    then each teacher's iterations over its ratios by :func:`stage_of`. Raises
    ``ValueError`` if any stage would get 0 iterations.
    """
    if isinstance(num_iters, bool) or int(num_iters) != num_iters or num_iters <= 0:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}")
    if not plan:
        raise ValueError("teacher plan must name at least one teacher")
    for entry in plan:
        if not isinstance(entry, Mapping) or "teacher" not in entry or "r_max" not in entry:
            raise ValueError(f"each plan entry needs 'teacher' and 'r_max', got {entry!r}")
    shares = [entry.get("share", 1) for entry in plan]
    per_teacher = split_iters(shares, int(num_iters))
    stages: list[TeacherStage] = []
    for entry, iters in zip(plan, per_teacher):
        teacher, r_max, step = str(entry["teacher"]), entry["r_max"], entry.get("step")
        rs = ratios(r_max, step)
        counts = stage_iters(iters, r_max, step)
        for k, (r, n) in enumerate(zip(rs, counts)):
            if n == 0:
                raise ValueError(
                    f"teacher {teacher!r} gets {iters} iterations for {len(rs)} stages: "
                    f"stage {k} (ratio {r}) would get 0 iterations; raise num_iters"
                )
            stages.append(TeacherStage(teacher=teacher, ratio=r, stage=k, iters=n))
    return stages
