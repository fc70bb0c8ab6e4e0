"""The workflow config: one schema (``config.schema.yaml`` beside this module) holds every
default and every check of a value's shape; :class:`masters.experiments.Design` adds the checks
that relate keys to each other (an unknown teacher in a plan, a step larger than r_max, ...).

The rules (``rules/common.smk``), ``masters trace`` and the unit tests validate through
:func:`validate`, and the command-line defaults of the ``masters`` subcommands come from
:func:`default`, so a default is written once.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from masters.evaluation import is_task_yaml

SCHEMA = Path(__file__).with_name("config.schema.yaml")


# Name-keyed maps where a null entry removes the name (a paper config drops the tiny world's
# student, models and benchmarks that config.yaml defines: --configfile merges, it cannot delete).
REMOVABLE = ("models", "students", "benchmarks", "tables")


class ConfigError(ValueError):
    """An invalid config; the message names the offending key (``invalid config: key a.b: ...``)."""


@cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _validator():
    from jsonschema import validators

    base = validators.validator_for(schema())
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, sub):
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop and key not in instance:
                    instance[key] = copy.deepcopy(prop["default"])
        yield from check_properties(validator, properties, instance, sub)

    return validators.extend(base, {"properties": properties_with_defaults})(schema())


def _key(error) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(top level)"


def validate(config: dict[str, Any], repo: str | Path | None = None) -> dict[str, Any]:
    """Fill in the schema's defaults (in place) and check ``config``; returns it.

    With ``repo`` (the workflow's directory), also checks that a benchmark's task YAML exists.
    Raises :class:`ConfigError` naming the first offending key.
    """
    from jsonschema.exceptions import best_match

    for key in REMOVABLE:  # merge-patch deletion: a null entry removes a name a base config defined
        if isinstance(config.get(key), dict):
            config[key] = {name: entry for name, entry in config[key].items() if entry is not None}
    error = best_match(_validator().iter_errors(config))
    if error is not None:
        raise ConfigError(f"invalid config: key {_key(error)}: {error.message}")
    errors = _world_errors(config)
    if repo is not None:
        for name, bench in config["benchmarks"].items():
            task = bench["task"]
            if is_task_yaml(task) and not (Path(repo) / task).is_file():
                errors.append(f"benchmarks.{name}.task: task YAML {task!r} not found in {repo}")
        for table, spec in config["tables"].items():
            if spec.get("literature"):
                errors += _literature_errors(config, table, Path(repo))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(f"key {e}" for e in errors))
    return config


def _literature_errors(config: dict, table: str, repo: Path) -> list[str]:
    """A table's CSV of reported numbers must exist, and each of its columns must be ``model``,
    ``source``, a table column of the config's benchmarks (their ``column``) or a descriptive
    column of the table's rows: a column matching nothing would be silently left out."""
    import csv

    key, path = f"tables.{table}.literature", repo / config["tables"][table]["literature"]
    if not path.is_file():
        return [f"{key}: {path} not found"]
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    spec = config["tables"][table]
    known = {"model", "source", *(b.get("column", name) for name, b in config["benchmarks"].items()),
             *(k for row in spec.get("rows", []) for k in (row.get("columns") or {}))}
    unread = [c for c in header if c not in known]
    if "model" not in header:
        return [f"{key}: {path} has no `model` column"]
    return [f"{key}: {path}: column(s) {unread} are no benchmark column (known: {sorted(known)})"] if unread else []


def _world_errors(config: dict) -> list[str]:
    errors = []
    models = config["world"]["models"]
    for name, size in models.items():
        if size["intermediate_size"] < size["hidden_size"] // 4:
            errors.append(f"world.models.{name}.intermediate_size: {size['intermediate_size']} is tiny for"
                          f" hidden_size {size['hidden_size']}")
    if models["L"]["vocab_multiple"] == models["S"]["vocab_multiple"]:
        errors.append("world.models.S.vocab_multiple: must differ from L's, so that teacher and student"
                      " logit widths differ by padding (METHOD.md §5)")
    return errors


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """A validated deep copy (defaults filled in); ``config`` itself is left as it is."""
    return validate(copy.deepcopy(config))


def _node(key: str) -> dict:
    node = schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _resolve_ref(node: dict) -> dict:
    """``node`` merged over the definitions its ``$ref`` chain points to."""
    if "$ref" not in node:
        return node
    target: Any = schema()
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve_ref(target), **{k: v for k, v in node.items() if k != "$ref"}}


def default(key: str) -> Any:
    """The schema's default of a dotted key, e.g. ``default("generation.max_new_tokens")``."""
    node = _node(key)
    if "default" not in node:
        raise KeyError(f"config.schema.yaml: {key} has no default")
    return node["default"]


def plan_entry(teacher: str) -> dict[str, Any]:
    """A teacher-plan entry with the schema's defaults (the plan of an experiment that names none)."""
    props = schema()["definitions"]["plan_entry"]["properties"]
    return {"teacher": teacher, **{k: v["default"] for k, v in props.items() if "default" in v}}


def describe(key: str) -> str:
    """The schema's description of a dotted key (for a command-line flag's help)."""
    return " ".join(_resolve_ref(_node(key)).get("description", "").split())


def merge(base: dict, override: dict) -> dict:
    """Snakemake's ``--configfile`` semantics: ``override`` merged into ``base`` (nested dicts)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(files: list[str | Path], repo: str | Path | None = None) -> dict[str, Any]:
    """The config a workflow run with these ``--configfile``s sees (later files win), validated."""
    config: dict = {}
    for path in files:
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate(config, repo)
