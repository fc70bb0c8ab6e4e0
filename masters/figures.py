"""The paper's figures, regenerated from result files only (PNG and PDF).

* Fig. 2 — (a) the mask ratio r[i] of Eq. 3 at every training iteration (from each run's
  ``train_log.csv``), (b) the student's mean benchmark score at each stage checkpoint,
  (c) naive vs mask-progressive distillation, without and with RL (reward feedback).
* Learning curves (not a paper figure) — the student's mean accuracy against the training
  step for some runs (``masters.curves``).
* Fig. F.4 — mean JSD between each masked teacher and the student (the ``divergence`` of
  the reward files, METHOD.md §5) and the masked teacher's own mean benchmark score, against
  the mask ratio (the premise of Eq. 1-3: masking makes the teacher gradually weaker and
  closer to the student); also written as a table (``.csv``, ``.md``).
* Fig. 6 — the inference time of each model of Table 3 on the benchmark suite: the wall seconds
  of its evaluation jobs (Snakemake's benchmark files, summed over a run's jobs, mean over
  seeds); also ``stem.csv``. A job's time includes loading the model and lm-eval's own work.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from masters.tables import benchmark_results, column_scores  # noqa: E402


def _mean_score(files: list[str], columns: dict[str, list[str]] | None = None) -> float:
    """A checkpoint's mean score as the tables' Avg: over the table columns (``columns``: each
    with the benchmarks averaged into it, :func:`masters.tables.column_groups`; default one per
    benchmark)."""
    scores = benchmark_results(files)
    values = column_scores(scores, columns or {b: [b] for b in scores})
    return sum(values.values()) / len(values)


def _save(fig, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        # a fixed creation date keeps the PDF byte-identical across rebuilds
        fig.savefig(path, dpi=150, bbox_inches="tight",
                    metadata={"CreationDate": None} if path.suffix == ".pdf" else {"Software": None})
    plt.close(fig)
    return paths


def fig2(spec: dict, stem: str | Path) -> list[Path]:
    """``spec``: ``{"runs": [{"label", "log": train_log.csv, "base": [files],
    "stages": [[files of stage 0], ...]}], "compare": {label: [files]}}``."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in spec["runs"]:
        log = pd.read_csv(run["log"])
        axes[0].step(log["step"], log["ratio"], where="post", label=run["label"])
        scores = [_mean_score(run["base"], spec.get("columns"))] + [_mean_score(files, spec.get("columns"))
                                                                  for files in run["stages"]]
        axes[1].plot(range(len(scores)), scores, marker="o", label=run["label"])
    axes[0].set(title="(a) mask ratio per iteration", xlabel="iteration", ylabel="mask ratio r[i]")
    axes[1].set(title="(b) student score per stage checkpoint", xlabel="stages done (0 = student before training)",
                ylabel="mean accuracy (%)")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    labels = list(spec["compare"])
    values = [_mean_score(spec["compare"][label], spec.get("columns")) for label in labels]
    bars = axes[2].bar(range(len(labels)), values, color=["#9ecae1", "#3182bd", "#a1d99b", "#31a354"][: len(labels)])
    axes[2].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[2].set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    axes[2].set(title="(c) naive vs mask-progressive, w/o and w/ RL", ylabel="mean accuracy (%)")
    if values:
        axes[2].set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 5))
    return _save(fig, stem)


def fig_curves(spec: dict, stem: str | Path) -> list[Path]:
    """Learning curves: mean accuracy over benchmarks against the training step, one line per run
    (``spec``: ``{"limit": N, "runs": [{"label", "curve": CSV of masters.curves}]}``); the points
    also as ``stem.csv``."""
    frames = []
    for run in spec["runs"]:
        curve = pd.read_csv(run["curve"])
        column = {b: c for c, members in (spec.get("columns") or {}).items() for b in members}
        curve["column"] = curve["benchmark"].map(lambda b: column.get(b, b))  # as the tables' Avg
        per_column = curve.groupby(["step", "column"], as_index=False, sort=False)["accuracy"].mean()
        frames.append(per_column.groupby("step", as_index=False)["accuracy"].mean().assign(run=run["label"]))
    table = pd.concat(frames, ignore_index=True)[["run", "step", "accuracy"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in table.groupby("run", sort=False):
        ax.plot(rows["step"], rows["accuracy"], marker="o", label=label)
    limit = f"first {spec['limit']} items per benchmark" if spec.get("limit") else "full test sets"
    ax.set(title=f"Learning curves ({limit})", xlabel="training step", ylabel="mean accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(stem).with_suffix(".csv"), index=False)
    return _save(fig, stem)


def divergence_by_ratio(rewards: list[dict]) -> pd.DataFrame:
    """Mean and count of ``divergence`` per (teacher, ratio) over reward files, each given as
    ``{"file", "teacher", "ratio"}`` (the spec names them; nothing is read out of a path)."""
    frames = []
    for entry in rewards:
        frame = pd.read_parquet(entry["file"], columns=["divergence"])
        frame["teacher"], frame["ratio"] = entry["teacher"], float(entry["ratio"])
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    return data.groupby(["teacher", "ratio"])["divergence"].agg(["mean", "count"]).reset_index()


def masked_teacher_table(spec: dict) -> pd.DataFrame:
    """Per (teacher, ratio): mean JSD to the student (``jsd``, over ``responses``) and the masked
    teacher's mean benchmark score (``accuracy``, %), from ``spec`` (:func:`masters.specs.figf4_spec`)."""
    jsd = divergence_by_ratio(spec["rewards"]).rename(columns={"mean": "jsd", "count": "responses"})
    acc = pd.DataFrame([{"teacher": a["teacher"], "ratio": float(a["ratio"]),
                         "accuracy": _mean_score(a["results"], spec.get("columns"))}
                        for a in spec.get("accuracy", [])], columns=["teacher", "ratio", "accuracy"])
    return jsd.merge(acc, on=["teacher", "ratio"], how="outer").sort_values(["teacher", "ratio"]).reset_index(drop=True)


def fig_f4(spec: dict, stem: str | Path) -> list[Path]:
    """(a) mean JSD(masked teacher ‖ student) and (b) the masked teacher's own score against the
    mask ratio, one line per teacher; the numbers also as ``stem.csv`` and ``stem.md``."""
    table = masked_teacher_table(spec)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for teacher, rows in table.groupby("teacher"):
        axes[0].plot(rows["ratio"], rows["jsd"], marker="o", label=f"teacher {teacher}")
        axes[1].plot(rows["ratio"], rows["accuracy"], marker="o", label=f"teacher {teacher}")
    axes[0].set(title="(a) JSD between masked teacher and student", xlabel="mask ratio r",
                ylabel="mean token JSD (nats)")
    axes[1].set(title="(b) masked teacher's own score", xlabel="mask ratio r", ylabel="mean accuracy (%)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(stem).with_suffix(".csv"), index=False)
    Path(stem).with_suffix(".md").write_text(
        "Masked teachers: mean token JSD to the student and own mean benchmark score per mask ratio\n\n"
        + table.to_markdown(index=False, floatfmt=".4f") + "\n")
    return _save(fig, stem)


def fig6(spec: dict, stem: str | Path) -> list[Path]:
    """``spec``: ``{"table": name, "rows": [{"model", "label", "timings": [[benchmark TSVs] per
    seed]}]}`` (:func:`masters.specs.fig6_spec`)."""
    rows = []
    for row in spec["rows"]:
        per_seed = [sum(float(pd.read_csv(f, sep="\t")["s"].iloc[0]) for f in files) for files in row["timings"]]
        rows.append({"model": row["model"], "row": row["label"], "seconds": sum(per_seed) / len(per_seed),
                     "seeds": len(per_seed)})
    table = pd.DataFrame(rows, columns=["model", "row", "seconds", "seeds"])
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(len(table), 1)))
    names = [f"{m}: {r}" for m, r in zip(table["model"], table["row"])]
    ax.barh(names[::-1], table["seconds"][::-1])
    ax.set(title=f"Inference time on the benchmark suite ({spec['table']})", xlabel="evaluation wall time (s)")
    ax.grid(axis="x", alpha=0.3)
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    table.round({"seconds": 2}).to_csv(Path(stem).with_suffix(".csv"), index=False)
    return _save(fig, stem)
