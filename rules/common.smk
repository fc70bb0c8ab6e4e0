# Validation and input functions shared by every rule.
import json
import os
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


wildcard_constraints:
    task="|".join(W["tasks"]),
    split="train|test",
    model="[A-Za-z0-9_.-]+",


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
