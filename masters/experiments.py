"""Named experiments (the variants of METHOD.md §7 and the ablations) resolved into files.

The workflow's config names models, students (with their teacher roles ``large``/``mid``),
experiments and tables. :class:`Design` checks it (each error names the config key) and
answers the questions the Snakemake rules ask: which stages an experiment trains, which
masked teachers, responses and rewards each stage reads, and which (student, experiment,
seed) runs and checkpoints the tables need.

Every output path is keyed by exactly what the output depends on, so work is shared:

=====================  ===============================================================
masked teacher         ``masked/{model}/masked_r{ratio}`` (ratio 0 is the teacher itself)
training questions     ``train/questions.parquet``
responses              ``responses/{source}/{model}/r{ratio}/n{n}_s{seed}_{part}.parquet``
judged responses       ``judged/{judge}/{source}/{model}/r{ratio}/n{n}_s{seed}_{part}.parquet``
rewarded stage group   ``rewards/{student}/{teacher}/r{ratio}/{data}_s{seed}_{part}/{reward}.parquet``
trained student        ``students/{student}/{experiment}/s{seed}`` (``stage{k}/``, ``final/``)
evaluation             ``eval/{run}/{benchmark}.json``
=====================  ===============================================================

so the r_max grid of Table 5a reuses the masked checkpoints and responses of the main run,
and changing one experiment's settings changes only its own reward and training paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from masters.schedule import plan_stages, ratio_str, ratios

ROLES = ("large", "mid")
DATA = ("generated", "labels")
LOSSES = ("masters", "jsd")
SOURCES = ("teacher", "student")
JUDGES = ("rule", "llm")
DISTILL = ("normalized", "raw")
REWARDS = ("both", "acc", "distill")
STAGE_DATA = ("full", "partition")
EXPERIMENT_KEYS = ("extends", "train", "data", "plan", "loss", "sources", "judge", "distill", "reward", "alpha",
                   "n_teacher", "n_student", "stage_data", "training")
TRAINING_KEYS = ("steps", "batch_size", "lr", "beta", "lam", "grad_clip", "chunk_size", "save_every")
NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class DesignError(ValueError):
    """A config error; the message names every offending key."""


@dataclass(frozen=True)
class Experiment:
    """One experiment with every setting resolved (``extends`` and defaults applied)."""

    name: str
    train: bool
    data: str
    plan: tuple[dict, ...]
    loss: str
    sources: tuple[str, ...]
    judge: str
    distill: str
    reward: str
    alpha: float
    n_teacher: int
    n_student: int
    stage_data: str
    training: dict


@dataclass(frozen=True)
class StageJob:
    """Stage ``index`` of a run: train ``steps`` steps against ``teacher`` masked at ``ratio``."""

    index: int
    teacher: str  # model name
    ratio: float
    steps: int
    part: str  # "all", or "{k}of{M}" with stage data `partition`


class Design:
    """The resolved experiment design of one workflow config (see the module docstring)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.results = str(config.get("results", "results")).rstrip("/")
        self.models: dict[str, str] = dict(config.get("models", {}))
        self.students: dict[str, dict] = dict(config.get("students", {}))
        self.benchmarks: list[str] = list(config.get("benchmarks", {}))
        errors: list[str] = []
        self._check_students(errors)
        raw = config.get("experiments", {})
        self.experiments: dict[str, Experiment] = {}
        for name in raw:
            try:
                self.experiments[name] = self._resolve(name, raw, ())
            except DesignError as error:
                errors.append(str(error))
        for name, exp in self.experiments.items():
            self._check_experiment(exp, errors)
        self.tables: dict[str, dict] = dict(config.get("tables", {}))
        self._check_tables(errors)
        self._check_figures(errors)
        if errors:
            raise DesignError("invalid config:\n  " + "\n  ".join(dict.fromkeys(errors)))

    # ---------------------------------------------------------------- resolution and checks

    def _resolve(self, name: str, raw: dict, seen: tuple[str, ...]) -> Experiment:
        if not NAME.match(name):
            raise DesignError(f"experiments.{name}: names may use letters, digits and _ . + - only")
        if name in seen:
            raise DesignError(f"experiments.{name}.extends: cycle {' -> '.join(seen + (name,))}")
        entry = dict(raw[name] or {})
        unknown = sorted(set(entry) - set(EXPERIMENT_KEYS))
        if unknown:
            raise DesignError(f"experiments.{name}: unknown keys {unknown} (allowed: {list(EXPERIMENT_KEYS)})")
        defaults = self.config
        if "extends" in entry:
            parent_name = entry.pop("extends")
            if parent_name not in raw:
                raise DesignError(f"experiments.{name}.extends: unknown experiment {parent_name!r}")
            parent = self._resolve(parent_name, raw, seen + (name,)).__dict__.copy()
            parent.pop("name")
            training = {**parent["training"], **entry.pop("training", {})}
            merged = {**parent, **entry, "training": training}
        else:
            reward, gen = defaults.get("reward", {}), defaults.get("generation", {})
            merged = {
                "train": True, "data": "generated", "plan": [{"teacher": "large", "r_max": 0.0}],
                "loss": "masters", "sources": list(SOURCES),
                "judge": defaults.get("judge", {}).get("kind", "rule"),
                "distill": reward.get("distill", "normalized"), "reward": reward.get("use", "both"),
                "alpha": reward.get("alpha", 1.0), "n_teacher": gen.get("n_teacher", 4),
                "n_student": gen.get("n_student", 4),
                "stage_data": defaults.get("training", {}).get("stage_data", "full"),
                **entry,
                "training": {**_training_defaults(defaults), **entry.get("training", {})},
            }
        merged["plan"] = tuple(dict(p) for p in merged["plan"])
        merged["sources"] = tuple(merged["sources"])
        return Experiment(name=name, **merged)

    def _check_students(self, errors: list[str]) -> None:
        for name, path in self.models.items():
            if not NAME.match(name):
                errors.append(f"models.{name}: names may use letters, digits and _ . + - only")
        if not self.students:
            errors.append("students: name at least one student")
        for student, roles in self.students.items():
            if student not in self.models:
                errors.append(f"students.{student}: not a model in `models` ({sorted(self.models)})")
            for role, model in (roles or {}).items():
                if role not in ROLES:
                    errors.append(f"students.{student}.{role}: unknown teacher role (roles: {list(ROLES)})")
                elif model not in self.models:
                    errors.append(f"students.{student}.{role}: {model!r} is not a model in `models`")

    def _check_experiment(self, exp: Experiment, errors: list[str]) -> None:
        key = f"experiments.{exp.name}"
        for field, allowed in (("data", DATA), ("loss", LOSSES), ("judge", JUDGES), ("distill", DISTILL),
                               ("reward", REWARDS), ("stage_data", STAGE_DATA)):
            if getattr(exp, field) not in allowed:
                errors.append(f"{key}.{field}: {getattr(exp, field)!r} is not one of {list(allowed)}")
        if not exp.sources or set(exp.sources) - set(SOURCES):
            errors.append(f"{key}.sources: {list(exp.sources)} must be a non-empty subset of {list(SOURCES)}")
        unknown = sorted(set(exp.training) - set(TRAINING_KEYS))
        if unknown:
            errors.append(f"{key}.training: unknown keys {unknown} (allowed: {list(TRAINING_KEYS)})")
        for field in ("n_teacher", "n_student"):
            if not isinstance(getattr(exp, field), int) or getattr(exp, field) < 1:
                errors.append(f"{key}.{field}: must be a positive integer")
        if not exp.train:
            return
        if not exp.plan:
            errors.append(f"{key}.plan: a trained experiment needs at least one teacher")
        for i, entry in enumerate(exp.plan):
            where = f"{key}.plan[{i}]"
            extra = sorted(set(entry) - {"teacher", "r_max", "step", "share"})
            if extra:
                errors.append(f"{where}: unknown keys {extra} (allowed: teacher, r_max, step, share)")
            teacher = entry.get("teacher")
            if teacher is None:
                errors.append(f"{where}.teacher: missing")
            elif teacher not in ROLES and teacher not in self.models:
                errors.append(f"{where}.teacher: unknown teacher {teacher!r} (a role {list(ROLES)} or a model"
                              f" in `models`: {sorted(self.models)})")
            elif teacher in ROLES:
                for student, roles in self.students.items():
                    if teacher not in (roles or {}):
                        errors.append(f"{where}.teacher: role {teacher!r} is not set for student {student!r}"
                                      f" (students.{student}.{teacher})")
            r_max, step = entry.get("r_max", 0.0), entry.get("step", 0.05)
            if not isinstance(r_max, (int, float)) or isinstance(r_max, bool) or r_max < 0 or r_max >= 1:
                errors.append(f"{where}.r_max: {r_max!r} must be a number in [0, 1)")
                continue
            if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
                errors.append(f"{where}.step: {step!r} must be > 0")
                continue
            if r_max > 0 and step > r_max + 1e-12:
                errors.append(f"{where}.step: {step} is larger than r_max {r_max}")
                continue
            try:
                ratios(r_max, step)
            except ValueError as error:
                errors.append(f"{where}: {error}")
        if not any(e.startswith(key) for e in errors):
            try:
                self._stage_plan(exp)
            except ValueError as error:
                errors.append(f"{key}.training.steps: {error}")

    def _check_tables(self, errors: list[str]) -> None:
        for table, spec in self.tables.items():
            for b in spec.get("benchmarks") or []:
                if b not in self.benchmarks:
                    errors.append(f"tables.{table}.benchmarks: unknown benchmark {b!r} (known: {self.benchmarks})")
            for i, row in enumerate(spec.get("rows", [])):
                where = f"tables.{table}.rows[{i}]"
                if "experiment" in row and row["experiment"] not in self.experiments:
                    errors.append(f"{where}.experiment: unknown experiment {row['experiment']!r}"
                                  f" (known: {sorted(self.experiments)})")
                if "model" in row and row["model"] not in self.models and row["model"] not in ROLES:
                    errors.append(f"{where}.model: unknown model {row['model']!r} (known: {sorted(self.models)})")
                if ("experiment" in row) == ("model" in row):
                    errors.append(f"{where}: give exactly one of `experiment` or `model`")

    def _check_figures(self, errors: list[str]) -> None:
        figures = self.config.get("figures", {})
        for fig, spec in figures.items():
            names = list(spec.get("experiments", [])) + list((spec.get("compare") or {}).values())
            for name in names:
                if name not in self.experiments:
                    errors.append(f"figures.{fig}: unknown experiment {name!r} (known: {sorted(self.experiments)})")

    # ---------------------------------------------------------------- stages and runs

    def teacher_of(self, student: str, teacher: str) -> str:
        """A plan's teacher (a role or a model name) as the model name for ``student``."""
        return self.students[student][teacher] if teacher in ROLES else teacher

    def _stage_plan(self, exp: Experiment):
        return plan_stages([{"step": 0.05, **p, "teacher": p["teacher"]} for p in exp.plan],
                           int(exp.training["steps"]))

    def stages(self, student: str, experiment: str) -> list[StageJob]:
        exp = self.experiments[experiment]
        if not exp.train:
            return []
        planned = self._stage_plan(exp)
        out = []
        for k, st in enumerate(planned):
            part = "all" if exp.stage_data == "full" else f"{k}of{len(planned)}"
            out.append(StageJob(k, self.teacher_of(student, st.teacher), st.ratio, st.iters, part))
        return out

    def table_seeds(self, table: str) -> list[int]:
        return list(self.tables[table].get("seeds") or self.config.get("seeds", [0]))

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (student, experiment, seed) a table or figure needs, in a stable order."""
        out: dict[tuple[str, str, int], None] = {}
        for table in self.tables:
            for row in self.tables[table].get("rows", []):
                exp = row.get("experiment")
                if exp and self.experiments[exp].train:
                    for student in self.students:
                        for seed in self.table_seeds(table):
                            out[(student, exp, seed)] = None
        for spec in self.config.get("figures", {}).values():
            for exp in list(spec.get("experiments", [])) + list((spec.get("compare") or {}).values()):
                if self.experiments[exp].train:
                    for student in self.students:
                        out[(student, exp, self.figure_seed())] = None
        return list(out)

    def figure_seed(self) -> int:
        return int(self.config.get("seeds", [0])[0])

    # ---------------------------------------------------------------- paths

    def model_dir(self, name: str) -> str:
        return self.models[name].format(results=self.results)

    def teacher_dir(self, model: str, ratio: float) -> str:
        """The masked teacher; ratio 0 is the unmasked teacher's own checkpoint (no copy)."""
        if ratio_str(ratio) == "0.00":
            return self.model_dir(model)
        return f"{self.results}/masked/{model}/masked_r{ratio_str(ratio)}"

    def questions(self) -> str:
        return f"{self.results}/train/questions.parquet"

    def responses(self, source: str, model: str, ratio: float, n: int, seed: int, part: str, judge: str | None = None
                  ) -> str:
        stem = f"{source}/{model}/r{ratio_str(ratio)}/n{n}_s{seed}_{part}.parquet"
        return f"{self.results}/responses/{stem}" if judge is None else f"{self.results}/judged/{judge}/{stem}"

    def judge_key(self, exp: Experiment, student: str) -> str:
        """``rule``, or ``llm-<judge model>`` (the student by default, App. F.7)."""
        if exp.judge == "rule":
            return "rule"
        return f"llm-{self.config.get('judge', {}).get('model') or student}"

    def data_key(self, exp: Experiment) -> str:
        return "labels" if exp.data == "labels" else f"t{exp.n_teacher}s{exp.n_student}"

    def reward_key(self, exp: Experiment, student: str) -> str:
        alpha = f"{float(exp.alpha):g}"
        return f"{self.judge_key(exp, student)}_{exp.distill}_{exp.reward}_a{alpha}"

    def reward_file(self, student: str, experiment: str, stage: StageJob, seed: int) -> str:
        exp = self.experiments[experiment]
        seed = 0 if exp.data == "labels" else seed  # the dataset answers do not depend on the seed
        return (f"{self.results}/rewards/{student}/{stage.teacher}/r{ratio_str(stage.ratio)}/"
                f"{self.data_key(exp)}_s{seed}_{stage.part}/{self.reward_key(exp, student)}.parquet")

    def train_dir(self, student: str, experiment: str, seed: int) -> str:
        return f"{self.results}/students/{student}/{experiment}/s{seed}"

    # ---------------------------------------------------------------- evaluation runs

    def run_of_row(self, row: dict, student: str, seed: int) -> str:
        """The evaluation run id of a table row for ``student`` and ``seed``."""
        if "model" in row:
            model = self.teacher_of(student, row["model"]) if row["model"] in ROLES else row["model"]
            return f"models/{model}"
        exp = self.experiments[row["experiment"]]
        if not exp.train:
            return f"models/{student}"
        return f"{student}/{exp.name}/s{seed}/final"

    def stage_run(self, student: str, experiment: str, index: int) -> str:
        """The evaluation run of stage ``index``'s checkpoint (the last stage's is ``final``)."""
        last = len(self.stages(student, experiment)) - 1
        ckpt = "final" if index == last else f"stage{index}"
        return f"{student}/{experiment}/s{self.figure_seed()}/{ckpt}"

    def eval_runs(self) -> list[str]:
        """Every evaluation run the tables and figures read."""
        out: dict[str, None] = {}
        for table, spec in self.tables.items():
            for row in spec.get("rows", []):
                for student in self.students:
                    for seed in self.table_seeds(table):
                        out[self.run_of_row(row, student, seed)] = None
        fig2 = self.config.get("figures", {}).get("fig2", {})
        for exp in fig2.get("experiments", []):
            for student in self.students:
                for st in self.stages(student, exp):
                    out[self.stage_run(student, exp, st.index)] = None
        for exp in (fig2.get("compare") or {}).values():
            for student in self.students:
                out[self.run_of_row({"experiment": exp}, student, self.figure_seed())] = None
        return list(out)

    def parse_run(self, run: str) -> dict[str, Any]:
        """``models/L`` -> the model's checkpoint; ``S/masters/s0/final`` -> a trained checkpoint."""
        parts = run.split("/")
        if len(parts) == 2 and parts[0] == "models" and parts[1] in self.models:
            return {"model_dir": self.model_dir(parts[1]), "train_dir": None, "label": parts[1]}
        if len(parts) == 4 and parts[2].startswith("s") and parts[2][1:].isdigit():
            student, exp, seed, ckpt = parts[0], parts[1], int(parts[2][1:]), parts[3]
            train_dir = self.train_dir(student, exp, seed)
            return {"model_dir": f"{train_dir}/{ckpt}", "train_dir": train_dir, "label": run}
        raise DesignError(f"not an evaluation run: {run!r}")

    # ---------------------------------------------------------------- what a reward file reads

    def parse_reward(self, student: str, teacher: str, ratio: str, data: str, seed: int, part: str, reward: str):
        """The judged response files and settings behind one rewarded stage group."""
        judge, distill, use, alpha = reward.split("_")
        if data == "labels":
            responses = [self.responses("label", student, 0.0, 1, 0, part, judge=judge)]
        else:
            m = re.fullmatch(r"t(\d+)s(\d+)", data)
            if not m:
                raise DesignError(f"not a response set: {data!r}")
            n_t, n_s = int(m.group(1)), int(m.group(2))
            responses = [self.responses("teacher", teacher, float(ratio), n_t, seed, part, judge=judge),
                         self.responses("student", student, 0.0, n_s, seed, part, judge=judge)]
        return {"responses": responses, "teacher_dir": self.teacher_dir(teacher, float(ratio)),
                "student_dir": self.model_dir(student), "distill": distill, "use": use, "alpha": float(alpha[1:])}

    def mask_jobs(self) -> list[tuple[str, float]]:
        """Every (teacher model, ratio > 0) a needed run trains against."""
        out: dict[tuple[str, str], None] = {}
        for student, exp, _seed in self.runs():
            for st in self.stages(student, exp):
                if ratio_str(st.ratio) != "0.00":
                    out[(st.teacher, ratio_str(st.ratio))] = None
        return [(m, float(r)) for m, r in out]


def _training_defaults(config: dict) -> dict:
    training = config.get("training", {})
    return {k: training[k] for k in TRAINING_KEYS if k in training}


def part_shard(part: str) -> tuple[int, int]:
    """``"all"`` -> (0, 1); ``"2of5"`` -> (2, 5): the question shard of a stage (stage data)."""
    if part == "all":
        return 0, 1
    m = re.fullmatch(r"(\d+)of(\d+)", part)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise DesignError(f"not a question part: {part!r}")
    return int(m.group(1)), int(m.group(2))

