# Validation and thin input functions shared by every rule. The logic lives in the package:
# paths in masters.paths, the config's defaults and checks in masters.config (its schema) and
# masters.experiments.Design, what each job is given in masters.specs.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("9.0")


# The rules call `masters`: when snakemake runs from a venv that is not activated, that venv's
# bin directory is appended to PATH so the command is found. Appended, not prepended: an
# activated environment, or a rule's conda env (--sdm conda), still comes first.
envvars:
    "PATH",


os.environ["PATH"] = os.pathsep.join(
    [os.environ["PATH"], str(Path(sys.executable).parent)]
)

REPO = Path(workflow.basedir)
sys.path.insert(
    0, str(REPO)
)  # the masters package of this checkout, also without `pip install -e`
from masters import paths, specs, worker
from masters.config import ConfigError, validate
from masters.experiments import Design, DesignError, part_shard
from masters.resources import RESOURCE_KEYS, ResourcesError, all_families

# Jobs import it the same way: PYTHONPATH, inherited by every job (a SLURM job parses this file
# again), not an install, which a rule's conda env cannot make (Snakemake copies env files under
# .snakemake/conda/, where `-e ..` named no package), and not a path in a job's params (moving
# the checkout reruns nothing).
worker.export_package(REPO)

try:
    validate(config, REPO)  # the schema's defaults filled in; errors name the key
    DESIGN = Design(config)
    RES = all_families(
        config["resources"]
    )  # family -> JobResources (threads, resources)
except (ConfigError, DesignError, ResourcesError) as error:
    raise ValueError(str(error)) from None

RESULTS = DESIGN.results
GEN, JUDGE, REWARD, EVAL = (
    config[k] for k in ("generation", "judge", "reward", "evaluation")
)
W = config["world"]
VQA_MODELS = [m for m, size in W["models"].items() if size["sft"]["data"] == "vqa"]
CURVES = config["figures"].get("curves") or {}
BENCHMARKS = specs.benchmark_entries(DESIGN)


wildcard_constraints:
    **{
        **paths.WILDCARDS,
        "task": "|".join(map(re.escape, W["tasks"])),
        "benchmark": "|".join(map(re.escape, BENCHMARKS)),
    },


def out(name):
    """The output pattern of one kind of file (masters.paths.PATTERNS)."""
    return paths.pattern(RESULTS, name)


def log_of(name):
    return paths.log(RESULTS, name)


def bench_of(name):
    return paths.benchmark(RESULTS, name)


def output_stem(w, output):
    """The first output without its extension (`--out STEM` of the table and figure commands)."""
    return os.path.splitext(output[0])[0]


def judge_family(w):
    """LLM-judge jobs ask for the `judge` family's resources; the rule judge is a light job."""
    return "judge" if w.judge.startswith("llm-") else "default"


def generate_family(w):
    """The dataset answers as responses (`source=label`) only tokenize: no GPU."""
    return "default" if w.source == "label" else "generate"


def eval_family(w):
    """A teacher's own checkpoint (a 72B's rows of Tables 3-4) asks for `evaluate_teacher`."""
    return "evaluate_teacher" if DESIGN.is_teacher_run(w.run) else "evaluate"


def resources_by(select):
    """A rule's `resources:` when its family depends on the wildcards (`select(w)` -> family)."""
    return {
        key: (lambda w, key=key: RES[select(w)].resources.get(key))
        for key in RESOURCE_KEYS
    }


# ---------------------------------------------------------------- the embedded world


def data_path(task, split):
    return DESIGN.path("world_data", task=task, split=split)


def train_data():
    return [data_path(t, "train") for t in W["tasks"]]


def world_processor(w):
    """A VQA model's processor, or the judge's own (its tokenizer also learns the App. D text)."""
    judge = W["models"][w.model]["sft"]["data"] == "judge"
    return DESIGN.path("world_judge_processor" if judge else "world_processor")


def world_outputs():
    """The tiny world's models and accuracy table, when the config's models live there."""
    if not DESIGN.uses_world():
        return []
    return [f"{DESIGN.path('world_accuracy')}.csv"] + [
        DESIGN.path("world_model", model=m) for m in W["models"]
    ]


# ---------------------------------------------------------------- distillation


def generation_model(w):
    if w.source == "teacher":
        return DESIGN.teacher_dir(w.model, float(w.ratio))
    return DESIGN.model_dir(w.model)


def score_inputs(w):
    return DESIGN.score_inputs(
        w.student, w.teacher, w.ratio, w.data, int(w.seed), w.part
    )


def reward_inputs(w):
    return DESIGN.reward_inputs(
        w.student, w.teacher, w.ratio, w.data, int(w.seed), w.part, w.judge
    )


def train_inputs(w):
    stages = specs.train_stages(DESIGN, w.student, w.experiment, int(w.seed))
    return {
        "student": DESIGN.model_dir(w.student),
        "questions": DESIGN.questions(),
        "teachers": [s["teacher"] for s in stages],
        "rewards": [s["rewards"] for s in stages],
    }


# ---------------------------------------------------------------- evaluation, tables, figures


def eval_outputs():
    """One summary per (run, benchmark), written by one job per benchmark or one per run."""
    if EVAL["per_benchmark_jobs"]:
        return [out("evaluation")]
    return [paths.pattern(RESULTS, "evaluation", benchmark=b) for b in BENCHMARKS]


def eval_samples():
    return out(
        "eval_benchmark_samples" if EVAL["per_benchmark_jobs"] else "eval_samples"
    )


def eval_log():
    return log_of(specs.eval_job(DESIGN))


def eval_bench():
    return bench_of(specs.eval_job(DESIGN))


def eval_benchmarks(w):
    """The benchmarks one evaluation job scores."""
    return [w.benchmark] if EVAL["per_benchmark_jobs"] else list(BENCHMARKS)


def eval_data(w):
    return [
        BENCHMARKS[b]["data"] for b in eval_benchmarks(w) if "data" in BENCHMARKS[b]
    ]


def env_of(backend):
    """The conda environment for jobs running `backend`. vLLM pins its own torch and
    transformers (envs/vllm.yaml); everything else runs in the package's (envs/masters.yaml).
    """
    return "../envs/vllm.yaml" if backend == "vllm" else "../envs/masters.yaml"


def masters_command(backend="hf"):
    """How a job runs this package (this checkout's, through PYTHONPATH above): the `masters`
    command of the environment Snakemake runs in, or `python -m masters.cli` where the package is
    not installed: a rule's conda env (--sdm conda) and vLLM's environment (its pins exclude this
    package's)."""
    in_conda = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    return "python -m masters.cli" if in_conda or backend == "vllm" else "masters"


MASTERS = masters_command()
MASTERS_GENERATE = masters_command(GEN["backend"])
MASTERS_JUDGE = masters_command(JUDGE["backend"])
MASTERS_BENCHMARK_JUDGE = masters_command(config["benchmark_judge"]["backend"])


def judged_samples(w):
    """The samples file a judged benchmark's evaluation wrote (one job per benchmark or per run)."""
    if EVAL["per_benchmark_jobs"]:
        return paths.path(
            RESULTS, "eval_benchmark_samples", run=w.run, benchmark=w.benchmark
        )
    return paths.path(RESULTS, "eval_samples", run=w.run)


def benchmark_judge_model():
    """The judge checkpoint a judged benchmark waits for (none with an endpoint)."""
    judge = config["benchmark_judge"]
    return [] if judge["backend"] == "openai" else [DESIGN.model_dir(judge["model"])]


def benchmark_judge_flags():
    judge = config["benchmark_judge"]
    model = (
        judge["model"]
        if judge["backend"] == "openai"
        else DESIGN.model_dir(judge["model"])
    )
    flags = f"--backend {judge['backend']} --judge-model {shlex.quote(str(model))} --batch-size {judge['batch_size']}"
    if judge["backend"] == "openai":
        flags += f" --workers {judge['workers']} --api-key-env {shlex.quote(judge['api_key_env'] or '')}"
        flags += (
            f" --base-url {shlex.quote(judge['base_url'])}" if judge["base_url"] else ""
        )
    return flags + (" --trust-remote-code" if EVAL["trust_remote_code"] else "")


def warn_missing_judge_key():
    """Say at the start, not hours later, that the judged benchmarks' endpoint has no key (the
    judge jobs would fail; the evaluations before them are kept)."""
    judge, env = config["benchmark_judge"], config["benchmark_judge"]["api_key_env"]
    judged = [b for b in BENCHMARKS if DESIGN.judged(b)]
    if judged and judge["backend"] == "openai" and env and not os.environ.get(env):
        print(
            f"WARNING: benchmarks {judged} are judged through an endpoint whose key ${env} "
            "is not set: their judge_benchmark jobs will fail (export it, or set benchmark_judge)",
            file=sys.stderr,
        )


def table_outputs():
    return (
        specs.table_outputs(DESIGN)
        + specs.fidelity_outputs(DESIGN)
        + specs.judges_outputs(DESIGN, JUDGES_SPEC)
    )


def figure_outputs():
    return specs.figure_outputs(DESIGN)
