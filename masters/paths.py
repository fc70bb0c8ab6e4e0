"""Every output path of the workflow, defined once.

:data:`PATTERNS` maps each kind of output to its path under the results directory, with
Snakemake-style ``{wildcards}``; :data:`WILDCARDS` gives the regex each wildcard must match.
The rules take their ``output:``, ``log:`` and ``benchmark:`` patterns from here
(:func:`pattern`, :func:`log`, :func:`benchmark`) and :class:`masters.experiments.Design`
builds the inputs it plans with :func:`path` from the same patterns, so the two cannot drift.

Every setting an output depends on is a wildcard of its own (the reward file's judge, distill
form, reward parts and alpha each have one), so nothing is read back out of a file name by
splitting: :func:`path` refuses a value its wildcard's regex does not match, which makes every
path it builds parse back (:func:`parse`) to the values it was built from - for any name the
config schema allows (letters, digits and ``_ . + -``).
"""

from __future__ import annotations

import re
import string

NAME = r"[A-Za-z0-9_.+-]+"  # a model, student, experiment, table or benchmark name (the schema's)

WILDCARDS: dict[str, str] = {
    "model": NAME,
    "student": NAME,
    "teacher": NAME,
    "experiment": NAME,
    "benchmark": NAME,
    "table": NAME,
    "figure": NAME,
    "task": NAME,
    "dataset": NAME,
    "split": "train|test",
    "ratio": r"\d\.\d{2,6}",  # masters.schedule.ratio_str
    "source": "teacher|student|label",
    "n": r"\d+",
    "seed": r"\d+",
    "part": r"all|\d+of\d+",  # the questions of a stage: all, or shard k of M (stage_data: partition)
    "judge": rf"rule|llm-{NAME}",  # llm-<judge model>
    "data": r"labels|t\d+s\d+",  # dataset answers, or t<n_teacher>s<n_student> generated responses
    "distill": "normalized|raw",
    "use": "both|acc|distill",
    "alpha": r"\d+(\.\d+)?(e[+-]\d+)?",  # repr(float(alpha)), alpha >= 0
    "checkpoint": r"final|stage\d+",
    "run": rf"models/{NAME}|masked/{NAME}/r\d\.\d{{2,6}}|{NAME}/{NAME}/s\d+/(final|stage\d+)",  # see RUNS
}

PATTERNS: dict[str, str] = {
    # the embedded tiny world
    "world_data": "world/data/{task}/{split}.parquet",
    "world_processor": "world/processor",
    "world_judge_processor": "world/judge_processor",  # the judge model's (J) own tokenizer
    "world_model": "world/models/{model}",
    "world_sft_loss": "world/sft/{model}_loss.csv",
    "world_accuracy": "world/accuracy",  # .csv .md .tex
    # paper-scale inputs fetched once: Hub models (pinned revision), training datasets
    "hub_model": "hub/{model}",
    "dataset": "datasets/{dataset}.parquet",  # converted to the question schema
    "hub_benchmark": "hub/benchmarks/{benchmark}",  # a Hub benchmark's test data: parquet + manifest.json
    # distillation (METHOD.md §1-§7)
    "masked": "masked/{model}/masked_r{ratio}",
    "questions": "train/questions.parquet",
    "responses": "responses/{source}/{model}/r{ratio}/n{n}_s{seed}_{part}.parquet",
    "judged": "judged/{judge}/{source}/{model}/r{ratio}/n{n}_s{seed}_{part}.parquet",
    "scores": "scores/{student}/{teacher}/r{ratio}/{data}_s{seed}_{part}.parquet",  # D, pi_ref log-probs
    "rewards": "rewards/{student}/{teacher}/r{ratio}/{data}_s{seed}_{part}/{judge}/{distill}_{use}_a{alpha}.parquet",
    "students": "students/{student}/{experiment}/s{seed}",
    # evaluation and what is made of it (METHOD.md §8)
    "evaluation": "eval/{run}/{benchmark}.json",
    "eval_run": "eval/{run}",  # the one-job-per-run log
    "eval_samples": "eval/{run}/samples.jsonl",  # per-item responses (one job per run)
    "eval_benchmark_samples": "eval/{run}/{benchmark}.samples.jsonl",  # (one job per benchmark)
    "judged_evaluation": "eval/{run}/{benchmark}.judged.json",  # a judged benchmark's score (what tables read)
    "judged_items": "eval/{run}/{benchmark}.judged.jsonl",  # its judge replies, per item
    "table": "tables/{table}",  # .csv .md .tex
    "figure": "figures/{figure}",
    "curve": "curves/{student}/{experiment}/s{seed}",  # .csv: accuracy per saved training step  # .png .pdf
}

RUNS: dict[str, str] = {  # an evaluation run: an untrained model, a masked teacher, or a trained checkpoint
    "model": "models/{model}",
    "masked": "masked/{model}/r{ratio}",
    "checkpoint": "{student}/{experiment}/s{seed}/{checkpoint}",
}


class PathError(ValueError):
    """A value that cannot be part of a path, or a path that is not of the expected kind."""


def wildcards_of(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def pattern(results: str, name: str, **fixed) -> str:
    """The Snakemake pattern of an output kind, e.g. ``results/masked/{model}/masked_r{ratio}``;
    ``fixed`` wildcards are filled in (``pattern(r, "evaluation", benchmark="x")``)."""
    template = PATTERNS[name]
    for key, value in fixed.items():
        if key not in wildcards_of(template) or not re.fullmatch(WILDCARDS[key], str(value)):
            raise PathError(f"{name}: cannot fix {key}={value!r}")
        template = template.replace("{" + key + "}", str(value))
    return f"{results}/{template}"


def _stem(name: str) -> str:
    return re.sub(r"\.[a-z]+$", "", PATTERNS[name])


def log(results: str, name: str) -> str:
    """The log of the job that writes an output: ``results/logs/<its pattern>.log``."""
    return f"{results}/logs/{_stem(name)}.log"


def benchmark(results: str, name: str) -> str:
    """Snakemake's benchmark file of the job that writes an output."""
    return f"{results}/benchmarks/{_stem(name)}.tsv"


def _format(template: str, what: str, values: dict) -> str:
    needed = wildcards_of(template)
    missing = [w for w in needed if w not in values]
    if missing or set(values) - set(needed):
        raise PathError(f"{what}: needs exactly {needed}, got {sorted(values)}")
    for key, value in values.items():
        if not re.fullmatch(WILDCARDS[key], str(value)):
            raise PathError(f"{what}: {key}={value!r} does not match /{WILDCARDS[key]}/")
    return template.format(**{k: str(v) for k, v in values.items()})


def path(results: str, name: str, **values) -> str:
    """The path of one output; every value must match its wildcard's regex."""
    return f"{results}/{_format(PATTERNS[name], name, values)}"


def _regex(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += [re.escape(template[pos:m.start()]), f"(?P<{m.group(1)}>{WILDCARDS[m.group(1)]})"]
        pos = m.end()
    return re.compile("".join(out + [re.escape(template[pos:])]))


def _parse(template: str, what: str, text: str) -> dict[str, str]:
    m = _regex(template).fullmatch(text)
    if not m:
        raise PathError(f"not {what}: {text!r} (expected {template})")
    return m.groupdict()


def parse(results: str, name: str, text: str) -> dict[str, str]:
    """The wildcard values of a path of kind ``name`` (the inverse of :func:`path`)."""
    return _parse(pattern(results, name), f"a {name} path", text)


# ---------------------------------------------------------------- composite keys


def run(kind: str, **values) -> str:
    """An evaluation run id: ``run("model", model="L")`` -> ``models/L``;
    ``run("checkpoint", student="S", experiment="masters", seed=0, checkpoint="final")``."""
    return _format(RUNS[kind], f"a {kind} run", values)


def parse_run(text: str) -> tuple[str, dict[str, str]]:
    """``models/L`` -> ("model", {"model": "L"}); the inverse of :func:`run`."""
    for kind, template in RUNS.items():
        m = _regex(template).fullmatch(text)
        if m:
            return kind, m.groupdict()
    raise PathError(f"not an evaluation run: {text!r} (expected one of {list(RUNS.values())})")


def data_key(labels: bool, n_teacher: int, n_student: int) -> str:
    """What a reward file's responses are: ``labels``, or ``t<n_teacher>s<n_student>``."""
    return "labels" if labels else f"t{int(n_teacher)}s{int(n_student)}"


def parse_data_key(key: str) -> tuple[int, int] | None:
    """None for ``labels``, else (n_teacher, n_student); the inverse of :func:`data_key`."""
    if key == "labels":
        return None
    m = re.fullmatch(r"t(\d+)s(\d+)", key)
    if not m:
        raise PathError(f"not a response set: {key!r} (labels or t<n>s<n>)")
    return int(m.group(1)), int(m.group(2))


def alpha_str(alpha: float) -> str:
    """The alpha segment of a reward path: the shortest text that reads back as the same float."""
    return repr(float(alpha))
