# Validation and input functions shared by every rule.
import json
import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# The rules call `masters`: when snakemake runs from a venv that is not activated, that venv's
# bin directory is appended to PATH so the command is found. Appended, not prepended: an
# activated environment, or a rule's conda env (--sdm conda), still comes first.
envvars:
    "PATH",


_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([_path, str(Path(sys.executable).parent)])


def validate_config(cfg):
    """Schema validation (defaults filled in); the error names the offending key."""
    from jsonschema import ValidationError
    from snakemake.exceptions import WorkflowError

    try:
        validate(cfg, schema="../schemas/config.schema.yaml", set_default=True)
    except (
        Exception
    ) as error:  # snakemake raises its WorkflowError wrapping the ValidationError
        cause = error.__cause__ or error.__context__
        if not isinstance(cause, ValidationError):
            raise
        key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
        raise WorkflowError(f"invalid config: key {key}: {cause.message}") from None


validate_config(config)

RESULTS = config["results"].rstrip("/")
GEN, JUDGE, REWARD = config["generation"], config["judge"], config["reward"]
EVAL = config["evaluation"]
WORLD = f"{RESULTS}/world"
W = config["world"]
REPO = Path(workflow.basedir)


def check_config(cfg):
    """Checks the JSON schema cannot express; each error names the config key."""
    errors = []
    for name, bench in cfg["benchmarks"].items():
        task = bench["task"]
        if task.endswith((".yaml", ".yml")) and not (REPO / task).is_file():
            errors.append(
                f"benchmarks.{name}.task: task YAML {task!r} not found in {REPO}"
            )
    for name, size in cfg["world"]["models"].items():
        if size["intermediate_size"] < size["hidden_size"] // 4:
            errors.append(
                f"world.models.{name}.intermediate_size: {size['intermediate_size']} is tiny for hidden_size {size['hidden_size']}"
            )
    models = cfg["world"]["models"]
    if models["L"]["vocab_multiple"] == models["S"]["vocab_multiple"]:
        errors.append(
            "world.models.S.vocab_multiple: must differ from L's, so that teacher and student"
            " logit widths differ by padding (METHOD.md §5)"
        )
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


check_config(config)

sys.path.insert(
    0, str(REPO)
)  # the masters package of this checkout, also without `pip install -e`
from masters.experiments import Design, DesignError, part_shard
from masters.resources import RESOURCE_KEYS, ResourcesError, all_families

try:
    DESIGN = Design(config)
    # family -> JobResources (threads, resources): what each rule asks the scheduler for
    RES = all_families(config["resources"])
except (DesignError, ResourcesError) as error:
    raise ValueError(str(error)) from None


def judge_family(w):
    """LLM-judge jobs ask for the `judge` family's resources; the rule judge is a light job."""
    return "judge" if w.judge.startswith("llm-") else "default"


def resources_by(select):
    """A rule's `resources:` when its family depends on the wildcards (`select(w)` -> family)."""
    return {
        key: (lambda w, key=key: RES[select(w)].resources.get(key))
        for key in RESOURCE_KEYS
    }


wildcard_constraints:
    task="|".join(W["tasks"]),
    split="train|test",
    model="[A-Za-z0-9_.+-]+",
    student="[A-Za-z0-9_.+-]+",
    teacher="[A-Za-z0-9_.+-]+",
    experiment="[A-Za-z0-9_.+-]+",
    ratio=r"\d\.\d{2,6}",
    source="teacher|student|label",
    n=r"\d+",
    seed=r"\d+",
    part=r"all|\d+of\d+",
    judge=r"rule|llm-[A-Za-z0-9_.+-]+",
    data=r"labels|t\d+s\d+",
    reward=r"[A-Za-z0-9_.+-]+_(normalized|raw)_(both|acc|distill)_a[0-9.e+-]+",
    run=r"models/[A-Za-z0-9_.+-]+|[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+/s\d+/(final|stage\d+)",
    benchmark="|".join(re.escape(b) for b in config["benchmarks"]),


def data_path(task, split):
    return f"{WORLD}/data/{task}/{split}.parquet"


def train_data():
    return [data_path(t, "train") for t in W["tasks"]]


def benchmarks_json():
    """The benchmark list for `masters evaluate`, with repo-relative YAMLs made absolute."""
    out = []
    for name, bench in config["benchmarks"].items():
        task = bench["task"]
        if task.endswith((".yaml", ".yml")):
            task = str(REPO / task)
        entry = {
            "name": name,
            "task": task,
            "metric": bench.get("metric", "exact_match,none"),
        }
        if "data" in bench:
            entry["data"] = bench["data"].format(results=RESULTS)
        out.append(entry)
    return json.dumps(out)


def benchmark_data():
    """Local data files the benchmarks read (so evaluation waits for them)."""
    return [
        b["data"].format(results=RESULTS)
        for b in config["benchmarks"].values()
        if "data" in b
    ]


def model_sizes():
    return list(W["models"])


def world_outputs():
    return [
        f"{WORLD}/accuracy.csv",
        *[f"{WORLD}/models/{m}" for m in model_sizes()],
    ]


# ---------------------------------------------------------------- distillation (masters.experiments)


def benchmark_entries():
    """name -> the entry `masters evaluate` takes (repo-relative YAMLs made absolute)."""
    return {b["name"]: b for b in json.loads(benchmarks_json())}


def reward_inputs(w):
    return DESIGN.parse_reward(
        w.student, w.teacher, w.ratio, w.data, int(w.seed), w.part, w.reward
    )


def train_inputs(w):
    stages = DESIGN.stages(w.student, w.experiment)
    return {
        "student": DESIGN.model_dir(w.student),
        "questions": DESIGN.questions(),
        "teachers": [DESIGN.teacher_dir(st.teacher, st.ratio) for st in stages],
        "rewards": [
            DESIGN.reward_file(w.student, w.experiment, st, int(w.seed))
            for st in stages
        ],
    }


def train_stage_args(w, input):
    stages = DESIGN.stages(w.student, w.experiment)
    args = " ".join(
        f"--stage {t} {r} {st.steps} {st.ratio}"
        for st, t, r in zip(stages, input.teachers, input.rewards)
    )
    names = " ".join(st.teacher for st in stages)
    return f"{args} --stage-names {names}"


def train_schedule(w):
    """Teacher, ratio, steps and data part of each stage. Not used by the command (the stage
    arguments carry them), but a parameter Snakemake tracks: parameters computed from `input`
    are not compared between runs, so without this a change of steps would not rerun training.
    """
    return [
        f"{st.teacher}:{st.ratio}:{st.steps}:{st.part}"
        for st in DESIGN.stages(w.student, w.experiment)
    ]


def eval_model(w):
    """The checkpoint an evaluation run reads (a trained run's directory as the input)."""
    run = DESIGN.parse_run(w.run)
    return run["train_dir"] or run["model_dir"]


def table_spec(name):
    """The `masters table` spec of one table: rows with their evaluation files per seed."""
    spec = DESIGN.tables[name]
    benchmarks = spec.get("benchmarks") or list(config["benchmarks"])
    rows = []
    for row in spec.get("rows", []):
        for student in DESIGN.students:
            if "model" in row:
                run = DESIGN.run_of_row(row, student, 0)
                model, seeds = run.split("/")[1], [0]
            else:
                model, seeds = student, DESIGN.table_seeds(name)
            results = [
                [
                    f"{RESULTS}/eval/{DESIGN.run_of_row(row, student, s)}/{b}.json"
                    for b in benchmarks
                ]
                for s in seeds
            ]
            if "model" in row or not DESIGN.experiments[row["experiment"]].train:
                results = results[
                    :1
                ]  # an untrained model has one result, not one per seed
            entry = {"model": model, "label": row["label"], "results": results}
            if row.get("columns"):
                entry["columns"] = row["columns"]
            shared = "model" in row and any(  # a teacher of several students: once
                r["model"] == model and r["label"] == row["label"] for r in rows
            )
            if not shared:
                rows.append(entry)
    literature = spec.get("literature")
    return {
        "caption": spec.get("caption", ""),
        "benchmarks": benchmarks,
        "average": bool(spec.get("average")),
        "literature": str(REPO / literature) if literature else None,
        "rows": rows,
    }


def table_inputs(name):
    spec = table_spec(name)
    files = [f for row in spec["rows"] for seed in row["results"] for f in seed]
    return files + ([spec["literature"]] if spec["literature"] else [])


def fig2_spec():
    fig = config["figures"].get("fig2", {})
    seed = DESIGN.figure_seed()
    bench = list(config["benchmarks"])
    files = lambda run: [f"{RESULTS}/eval/{run}/{b}.json" for b in bench]
    runs = []
    for exp in fig.get("experiments", []):
        for student in DESIGN.students:
            runs.append(
                {
                    "label": f"{student} {exp}",
                    "log": f"{DESIGN.train_dir(student, exp, seed)}/train_log.csv",
                    "base": files(f"models/{student}"),
                    "stages": [
                        files(DESIGN.stage_run(student, exp, st.index))
                        for st in DESIGN.stages(student, exp)
                    ],
                }
            )
    compare = {}
    for label, exp in (fig.get("compare") or {}).items():
        for student in DESIGN.students:
            run = DESIGN.run_of_row({"experiment": exp}, student, seed)
            compare[f"{label} ({student})" if len(DESIGN.students) > 1 else label] = (
                files(run)
            )
    return {"runs": runs, "compare": compare}


def fig2_inputs():
    spec = fig2_spec()
    out = [
        os.path.dirname(r["log"]) for r in spec["runs"]
    ]  # the run directory (a directory output)
    for r in spec["runs"]:
        out += r["base"] + [f for stage in r["stages"] for f in stage]
    return out + [f for files in spec["compare"].values() for f in files]


def figf4_inputs():
    seed = DESIGN.figure_seed()
    out = []
    for exp in config["figures"].get("figF4", {}).get("experiments", []):
        for student in DESIGN.students:
            out += [
                DESIGN.reward_file(student, exp, st, seed)
                for st in DESIGN.stages(student, exp)
            ]
    return list(dict.fromkeys(out))


def table_outputs():
    return [
        f"{RESULTS}/tables/{t}.{ext}"
        for t in DESIGN.tables
        for ext in ("csv", "md", "tex")
    ]


def figure_outputs():
    return [
        f"{RESULTS}/figures/{f}.{ext}"
        for f in config["figures"]
        for ext in ("png", "pdf")
    ]


def generation_model(w):
    if w.source == "teacher":
        return DESIGN.teacher_dir(w.model, float(w.ratio))
    return DESIGN.model_dir(w.model)


def train_settings(w):
    exp = DESIGN.experiments[w.experiment]
    t = exp.training
    sources = ["label"] if exp.data == "labels" else list(exp.sources)
    return (
        f"--loss {exp.loss} --sources {' '.join(sources)} --lr {t['lr']} --batch-size {t['batch_size']}"
        f" --beta {t['beta']} --lam {t['lam']} --grad-clip {t['grad_clip']} --chunk-size {t['chunk_size']}"
        f" --save-every {t['save_every']} --seed {w.seed}"
    )


def evaluate_flags():
    return (
        f"--batch-size {EVAL['batch_size']}"
        + (f" --limit {EVAL['limit']}" if EVAL["limit"] else "")
        + (" --trust-remote-code" if EVAL["trust_remote_code"] else "")
    )


def run_checkpoint(w, input):
    return DESIGN.parse_run(w.run)["model_dir"]
