"""What each workflow job is given, built from a :class:`~masters.experiments.Design`.

The rules stay thin: ``rules/common.smk`` calls these for the ``input:``, ``params:`` and
targets of the table, figure, train and evaluate rules, and ``masters trace`` uses the same
functions to print where a table cell comes from. Everything here is unit-tested without
running the DAG (``tests/test_specs.py``).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from masters import paths
from masters.experiments import Design
from masters.schedule import ratio_str

TABLE_FORMATS = ("csv", "md", "tex", "categories.csv")  # the outputs of rule table
FIGURE_FORMATS = ("png", "pdf")


# ---------------------------------------------------------------- benchmarks and evaluation


def benchmark_entries(design: Design) -> dict[str, dict]:
    """name -> the :class:`masters.evaluation.Benchmark` fields; a task YAML as configured (relative
    to the repository: the job resolves it, :func:`masters.evaluation.task_location`)."""
    out = {}
    for name, bench in design.config["benchmarks"].items():
        entry = {"name": name, "task": bench["task"], "metric": bench["metric"]}
        if bench.get("judge"):
            entry["judge"] = bench["judge"]
        if "data" in bench:
            entry["data"] = bench["data"].format(results=design.results)
        elif name in design.hub_benchmarks():
            entry["data"] = design.path("hub_benchmark", benchmark=name)  # fetched at a commit
        out[name] = entry
    return out


def eval_checkpoint(design: Design, run: str) -> str:
    """The checkpoint an evaluation run reads."""
    return design.parse_run(run)["model_dir"]


def eval_input(design: Design, run: str) -> str:
    """What an evaluation waits for: a trained run's directory (a directory output), or the model."""
    parsed = design.parse_run(run)
    return parsed["train_dir"] or parsed["model_dir"]


# ---------------------------------------------------------------- training


def train_stages(design: Design, student: str, experiment: str, seed: int) -> list[dict[str, Any]]:
    """Each stage of one run with everything ``masters train --stage`` takes, in order."""
    return [{"name": st.teacher, "teacher": design.teacher_dir(st.teacher, st.ratio),
             "rewards": design.reward_file(student, experiment, st, seed), "steps": st.steps,
             "ratio": ratio_str(st.ratio), **({"training": st.settings()} if st.training else {})}
            for st in design.stages(student, experiment)]


def train_args(design: Design, student: str, experiment: str, seed: int) -> str:
    """The ``masters train`` arguments of one run: its stages and settings. The teacher
    directories are quoted (an unmasked teacher's is the config's ``models`` entry, any text);
    every other value is a number, a name, a path built by :mod:`masters.paths` or a schema enum."""
    exp = design.experiments[experiment]
    t = exp.training
    planned = train_stages(design, student, experiment, seed)
    stages = " ".join(f"--stage {s['name']} {shlex.quote(s['teacher'])} {s['rewards']} {s['steps']} {s['ratio']}"
                      for s in planned)
    stages += "".join(f" --stage-training {k} {shlex.quote(json.dumps(s['training'], sort_keys=True))}"
                      for k, s in enumerate(planned) if "training" in s)
    sources = ["label"] if exp.data == "labels" else list(exp.sources)
    curves = design.config["figures"].get("curves") or {}
    curve = f" --curve-every {curves['every']}" if experiment in curves.get("experiments", []) else ""
    return (f"{stages} --loss {exp.loss} --sources {' '.join(sources)} --lr {t['lr']}"
            f" --batch-size {t['batch_size']} --beta {t['beta']} --lam {t['lam']} --grad-clip {t['grad_clip']}"
            f" --chunk-size {t['chunk_size']} --save-every {t['save_every']}{curve} --seed {seed}"
            + (f" --divergence {t['divergence']} --skew {t['skew']}" if t["divergence"] != "jsd" else "")
            + "".join(f" --{k.replace('_', '-')} {t[k]}" for k in ("visual_kl", "rdist", "nll") if t[k])
            + (f" --frozen {' '.join(t['frozen'])}" if t["frozen"] else "")
            + _deepspeed_flags(design.config["training"]))


def _deepspeed_flags(training: dict) -> str:
    if training["backend"] != "deepspeed":
        return ""
    extra = training.get("deepspeed") or {}
    return " --backend deepspeed" + (f" --deepspeed-config {shlex.quote(json.dumps(extra))}" if extra else "")


def snapshot_args(design: Design, model: str) -> str:
    """The ``masters snapshot`` arguments of a Hub model: repository, revision, file patterns."""
    source = design.hub_models()[model]
    allow = " --allow " + " ".join(map(shlex.quote, source["allow_patterns"])) if "allow_patterns" in source else ""
    return f"--repo {source['hub']} --revision {source['revision']}{allow}"


def fetch_benchmark_args(design: Design, name: str) -> str:
    """The ``masters fetch-benchmark`` arguments of a Hub benchmark: its task (YAML as configured,
    resolved by the job), revision, files."""
    entry = design.config["benchmarks"][name]
    files = " --allow " + " ".join(map(shlex.quote, entry["files"])) if entry.get("files") else ""
    task = entry["task"]
    revision = f" --revision {shlex.quote(entry['revision'])}" if "revision" in entry else ""  # else the task's pin
    return f"--task {shlex.quote(task)}{revision}{files}"


# ---------------------------------------------------------------- tables


def table_rows(design: Design, name: str) -> list[dict[str, Any]]:
    """Each row of a table once per student (a teacher of several students once): its model,
    label, config row and evaluation run per seed."""
    rows: list[dict] = []
    for row in design.tables[name]["rows"]:
        for student in design.students:
            if "model" in row:
                model = design.teacher_of(student, row["model"])
                if any(r["model"] == model and r["label"] == row["label"] for r in rows):
                    continue  # a teacher of several students: one row
                seeds = [0]
            else:
                trained = design.experiments[row["experiment"]].train
                model, seeds = student, design.table_seeds(name) if trained else [0]  # untrained: one result
            rows.append({"model": model, "label": row["label"], "row": row,
                         "runs": [design.run_of_row(row, student, s) for s in seeds]})
    return rows


def table_spec(design: Design, name: str, repo: str | Path) -> dict[str, Any]:
    """The ``masters table`` spec of one table: rows with their evaluation files per seed."""
    spec = design.tables[name]
    benchmarks = design.table_benchmarks(name)
    rows: list[dict] = []
    for r in table_rows(design, name):
        entry = {"model": r["model"], "label": r["label"],
                 "results": [[design.evaluation(run, b) for b in benchmarks] for run in r["runs"]]}
        if r["row"].get("columns"):
            entry["columns"] = r["row"]["columns"]
        rows.append(entry)
    literature = spec["literature"]
    return {"caption": spec["caption"], "benchmarks": benchmarks, "columns": design.column_groups(benchmarks),
            "average": spec["average"],
            "literature": str(Path(repo) / literature) if literature else None, "rows": rows}


def table_inputs(spec: dict[str, Any]) -> list[str]:
    files = [f for row in spec["rows"] for seed in row["results"] for f in seed]
    return files + ([spec["literature"]] if spec["literature"] else [])


def table_outputs(design: Design) -> list[str]:
    return [f"{design.path('table', table=t)}.{ext}" for t in design.tables for ext in TABLE_FORMATS]


# ---------------------------------------------------------------- fidelity to the paper's orderings


def fidelity_spec(design: Design, repo: str | Path) -> dict[str, Any]:
    """The ``masters fidelity`` spec: each claim with its table's rows (their result files)."""
    claims = []
    for claim in design.config["fidelity"]:
        table = table_spec(design, claim["table"], repo)
        claims.append({**claim, "benchmarks": table["benchmarks"], "columns": table["columns"], "table_rows": table["rows"]})
    return {"claims": claims}


def fidelity_inputs(spec: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(f for c in spec["claims"] for row in c["table_rows"] for seed in row["results"]
                              for f in seed))


def fidelity_outputs(design: Design) -> list[str]:
    return [f"{design.path('table', table='fidelity')}.{ext}" for ext in ("csv", "md")] \
        if design.config["fidelity"] else []


def judges_spec(design: Design) -> dict[str, Any]:
    """The ``masters judges`` spec: every response file an LLM judge scores for a run of this
    workflow, with the rule judge's file of the same responses."""
    pairs: dict[str, dict] = {}
    for student, exp, seed in design.runs():
        judge = design.judge_key(design.experiments[exp], student)
        if judge == "rule":
            continue
        for st in design.stages(student, exp):
            v = paths.parse(design.results, "rewards", design.reward_file(student, exp, st, seed))
            group = (v["student"], v["teacher"], v["ratio"], v["data"], int(v["seed"]), v["part"])
            for llm, rule in zip(design.group_responses(*group, judge=judge), design.group_responses(*group, judge="rule")):
                pairs[llm] = {"judge": judge, "source": paths.parse(design.results, "judged", llm)["source"],
                              "llm": llm, "rule": rule}
    return {"pairs": list(pairs.values())}


def judges_inputs(spec: dict[str, Any]) -> list[str]:
    return [f for p in spec["pairs"] for f in (p["llm"], p["rule"])]


def judges_outputs(design: Design, spec: dict[str, Any]) -> list[str]:
    return [f"{design.path('table', table='judges')}.{ext}" for ext in ("csv", "md")] if spec["pairs"] else []


# ---------------------------------------------------------------- figures


def fig2_spec(design: Design) -> dict[str, Any]:
    """Fig. 2: (a) each run's ratio per iteration, (b) its score per stage, (c) the comparison."""
    fig = design.config["figures"].get("fig2", {})
    seed = design.figure_seed()
    files = lambda run: [design.evaluation(run, b) for b in design.benchmarks]  # noqa: E731
    runs = [{"label": f"{student} {exp}", "log": f"{design.train_dir(student, exp, seed)}/train_log.csv",
             "base": files(paths.run("model", model=student)),
             "stages": [files(design.stage_run(student, exp, st.index)) for st in design.stages(student, exp)]}
            for exp in fig.get("experiments", []) for student in design.students]
    compare = {}
    for label, exp in (fig.get("compare") or {}).items():
        for student in design.students:
            key = f"{label} ({student})" if len(design.students) > 1 else label
            compare[key] = files(design.run_of_row({"experiment": exp}, student, seed))
    return {"runs": runs, "compare": compare, "columns": design.column_groups(design.benchmarks)}


def fig2_inputs(spec: dict[str, Any]) -> list[str]:
    out = [str(Path(r["log"]).parent) for r in spec["runs"]]  # the run directory (a directory output)
    for r in spec["runs"]:
        out += r["base"] + [f for stage in r["stages"] for f in stage]
    return out + [f for files in spec["compare"].values() for f in files]


def figf4_spec(design: Design) -> dict[str, Any]:
    """Fig. F.4: the reward files (their ``divergence``) of every stage of these runs, each with
    its teacher and ratio, and the benchmark results of each masked teacher itself."""
    seed = design.figure_seed()
    rewards = {design.reward_file(student, exp, st, seed): {"teacher": st.teacher, "ratio": ratio_str(st.ratio)}
               for exp in design.config["figures"].get("figF4", {}).get("experiments", [])
               for student in design.students for st in design.stages(student, exp)}
    accuracy = [{"teacher": teacher, "ratio": ratio_str(ratio),
                 "results": [design.evaluation(design.masked_run(teacher, ratio), b) for b in design.benchmarks]}
                for teacher, ratio in design.figf4_teachers()]
    return {"rewards": [{"file": f, **v} for f, v in rewards.items()], "accuracy": accuracy,
            "columns": design.column_groups(design.benchmarks)}


def figf4_inputs(spec: dict[str, Any]) -> list[str]:
    return [r["file"] for r in spec["rewards"]] + [f for a in spec["accuracy"] for f in a["results"]]


def curves_spec(design: Design) -> dict[str, Any]:
    """The learning-curves figure: each run's curve CSV (seed ``seeds[0]``)."""
    curves = design.config["figures"].get("curves") or {}
    seed = design.figure_seed()
    return {"limit": curves.get("limit"), "columns": design.column_groups(design.benchmarks),
            "runs": [{"label": f"{student} {exp}", "curve": design.path("curve", student=student, experiment=exp,
                                                                       seed=seed) + ".csv"}
                     for exp in curves.get("experiments", []) for student in design.students]}


def curves_inputs(spec: dict[str, Any]) -> list[str]:
    return [run["curve"] for run in spec["runs"]]


def eval_job(design: Design) -> str:
    """The output kind (:mod:`masters.paths`) that names an evaluation job, its log and its
    benchmark file: one job per (run, benchmark) with ``evaluation.per_benchmark_jobs``, else one
    per run."""
    return "evaluation" if design.config["evaluation"]["per_benchmark_jobs"] else "eval_run"


def fig6_spec(design: Design) -> dict[str, Any]:
    """Fig. 6: the inference time of each model of a table on the benchmark suite, from its
    evaluation jobs' own timings (Snakemake's benchmark files: one per run, or one per run and
    benchmark with ``evaluation.per_benchmark_jobs``), per seed."""
    fig = design.config["figures"].get("fig6")
    if not fig:
        return {"table": None, "rows": []}
    job = eval_job(design)
    benchmarks = [None]  # one job per run: its file names no benchmark
    if job == "evaluation":
        benchmarks = design.table_benchmarks(fig["table"])

    def timings(run: str) -> list[str]:
        return [paths.benchmark(design.results, job).format(run=run, benchmark=b) for b in benchmarks]

    return {"table": fig["table"], "rows": [{"model": r["model"], "label": r["label"],
                                             "timings": [timings(run) for run in r["runs"]]}
                                            for r in table_rows(design, fig["table"])]}


def fig6_inputs(spec: dict[str, Any]) -> list[str]:
    return [f for row in spec["rows"] for seed in row["timings"] for f in seed]


def figure_outputs(design: Design) -> list[str]:
    return [f"{design.path('figure', figure=f)}.{ext}" for f in design.config["figures"] for ext in FIGURE_FORMATS]


# ---------------------------------------------------------------- where a table cell comes from


def trace(design: Design, table: str, label: str) -> list[str]:
    """The chain of files behind one row of a table, one line per file, indented by depth:
    table <- evaluation summaries <- checkpoint <- (per stage) masked teacher and reward file
    <- judged responses <- responses <- the generating model."""
    if table not in design.tables:
        raise KeyError(f"no table {table!r} (tables: {sorted(design.tables)})")
    rows = [r for r in design.tables[table]["rows"] if r["label"] == label]
    if not rows:
        raise KeyError(f"table {table} has no row {label!r} (rows: {[r['label'] for r in design.tables[table]['rows']]})")
    benchmarks = design.table_benchmarks(table)
    lines = [f"{design.path('table', table=table)}.csv  [{table}, row {label!r}]"]
    for row in rows:
        for student in design.students:
            for seed in (design.table_seeds(table) if "experiment" in row else [0]):
                run = design.run_of_row(row, student, seed)
                lines += [f"  {design.evaluation(run, b)}" for b in benchmarks]
                lines += _trace_run(design, row, student, seed, run)
    return lines


def _trace_run(design: Design, row: dict, student: str, seed: int, run: str) -> list[str]:
    parsed = design.parse_run(run)
    if parsed["train_dir"] is None:
        return [f"    {parsed['model_dir']}  [model {parsed['label']}]"]
    lines = [f"    {parsed['model_dir']}  [checkpoint of {parsed['train_dir']}]",
             f"      {design.model_dir(student)}  [student, pi_ref]"]
    exp = row["experiment"]
    for st in design.stages(student, exp):
        reward = design.reward_file(student, exp, st, seed)
        v = paths.parse(design.results, "rewards", reward)
        group = (v["student"], v["teacher"], v["ratio"], v["data"], int(v["seed"]), v["part"])
        inputs = design.reward_inputs(*group, v["judge"])
        lines += [f"      stage {st.index}: {st.steps} steps, teacher {st.teacher} masked at {ratio_str(st.ratio)}",
                  f"        {reward}",
                  f"          {inputs['scores']}  [D, pi_ref log-probs]",
                  f"            {design.score_inputs(*group)['teacher']}  [{'masked ' if st.ratio else ''}teacher]"]
        for judged in inputs["responses"]:
            j = paths.parse(design.results, "judged", judged)
            raw = design.responses(j["source"], j["model"], float(j["ratio"]), int(j["n"]), int(j["seed"]), j["part"])
            lines += [f"          {judged}", f"            {raw}"]
    return lines
