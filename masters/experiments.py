"""Named experiments (the variants of METHOD.md §7 and the ablations) resolved into files.

The workflow's config names models, students (with their teacher roles ``large``/``mid``),
experiments and tables. :class:`Design` checks it (each error names the config key) and
answers the questions the Snakemake rules ask: which stages an experiment trains, which
masked teachers, responses and rewards each stage reads, and which (student, experiment,
seed) runs and checkpoints the tables need.

Every output path (``masters.paths.PATTERNS``) is keyed by exactly what the output depends on,
so work is shared: the r_max grid of Table 5a reuses the masked checkpoints and responses of the
main run, and changing one experiment's settings changes only its own reward and training paths.

The config reaching :class:`Design` is validated first (``masters.config``: the schema holds
every default and the shape of every value); :class:`Design` adds the checks that relate keys
to each other, each error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from masters import paths
from masters.config import ConfigError, plan_entry, validated
from masters.evaluation import is_task_yaml
from masters.schedule import plan_stages, ratio_str, ratios

ROLES = ("large", "mid")
TRAINING_KEYS = ("steps", "batch_size", "lr", "beta", "lam", "divergence", "skew", "visual_kl", "rdist", "nll", "frozen",
                 "grad_clip", "chunk_size", "save_every")


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
    judge_model: str | None  # a model name or a teacher role; None: judge.model, else the student
    distill: str
    reward: str
    alpha: float
    n_teacher: int
    n_student: int
    stage_data: str
    training: dict


def stage_settings(settings: dict) -> tuple:
    """A stage's own training settings as sorted (key, value) pairs, lists as tuples (hashable)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


@dataclass(frozen=True)
class StageJob:
    """Stage ``index`` of a run: train ``steps`` steps against ``teacher`` masked at ``ratio``."""

    index: int
    teacher: str  # model name
    ratio: float
    steps: int
    part: str  # "all", or "{k}of{M}" with stage data `partition`
    training: tuple = ()  # its plan entry's own training settings, as sorted (key, value) pairs

    def settings(self) -> dict:
        """The plan entry's training settings of this stage (``frozen`` as a list)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.training}


class Design:
    """The resolved experiment design of one workflow config (see the module docstring)."""

    def __init__(self, config: dict[str, Any]):
        try:
            config = validated(config)
        except ConfigError as error:
            raise DesignError(str(error)) from None
        self.config = config
        self.results = config["results"].rstrip("/")
        self.models: dict[str, str | dict] = dict(config["models"])  # a directory, or a Hub source
        self.students: dict[str, dict] = dict(config["students"])
        self.benchmarks: list[str] = list(config["benchmarks"])
        self.tables: dict[str, dict] = dict(config["tables"])
        errors: list[str] = []
        self._check_students(errors)
        self._check_questions(errors)
        self._check_benchmark_judge(errors)
        raw = config["experiments"]
        self.experiments: dict[str, Experiment] = {}
        for name in raw:
            try:
                self.experiments[name] = self._resolve(name, raw, ())
            except DesignError as error:
                errors.append(str(error))
        for exp in self.experiments.values():
            self._check_plan(exp, errors)
            self._check_judge(exp, errors)
        self._check_tables(errors)
        self._check_fidelity(errors)
        self._check_figures(errors)
        if not errors:
            self._check_backend(errors)
        if errors:
            raise DesignError("invalid config:\n  " + "\n  ".join(dict.fromkeys(errors)))

    # ---------------------------------------------------------------- resolution and checks

    def _resolve(self, name: str, raw: dict, seen: tuple[str, ...]) -> Experiment:
        """``extends`` chains merged (a child's ``training`` merged key by key), then the defaults."""
        if name in seen:
            raise DesignError(f"experiments.{name}.extends: cycle {' -> '.join(seen + (name,))}")
        entry = dict(raw[name] or {})
        if "extends" in entry:
            parent_name = entry.pop("extends")
            if parent_name not in raw:
                raise DesignError(f"experiments.{name}.extends: unknown experiment {parent_name!r}")
            merged = self._resolve(parent_name, raw, seen + (name,)).__dict__.copy()
            merged.pop("name")
        else:
            c = self.config
            merged = {"train": True, "data": "generated", "plan": [plan_entry("large")],
                      "loss": "masters", "sources": ["teacher", "student"], "judge": c["judge"]["kind"],
                      "judge_model": c["judge"]["model"],
                      "distill": c["reward"]["distill"], "reward": c["reward"]["use"], "alpha": c["reward"]["alpha"],
                      "n_teacher": c["generation"]["n_teacher"], "n_student": c["generation"]["n_student"],
                      "stage_data": c["training"]["stage_data"],
                      "training": {k: c["training"][k] for k in TRAINING_KEYS}}
        training = {**merged["training"], **entry.pop("training", {})}
        merged = {**merged, **entry, "training": training}
        step = self.config["masking"]["step"]  # an entry naming no step takes the config's
        merged["plan"] = tuple({"step": step, **p} for p in merged["plan"])
        counts = {"teacher": merged["n_teacher"], "student": merged["n_student"]}
        if merged["data"] == "generated":  # a source with no responses is not trained on (Table 5c)
            asked = list(merged["sources"])
            merged["sources"] = [s for s in asked if counts[s] > 0]
            if not merged["sources"]:
                raise DesignError(f"experiments.{name}: no responses to train on (n_teacher = {counts['teacher']},"
                                  f" n_student = {counts['student']}, sources = {asked})")
        merged["sources"] = tuple(merged["sources"])
        return Experiment(name=name, **merged)

    def _check_students(self, errors: list[str]) -> None:
        if not self.students:
            errors.append("students: name at least one student")
        for student, roles in self.students.items():
            if student not in self.models:
                errors.append(f"students.{student}: not a model in `models` ({sorted(self.models)})")
            for role, model in (roles or {}).items():
                if model not in self.models:
                    errors.append(f"students.{student}.{role}: {model!r} is not a model in `models`")

    def _check_benchmark_judge(self, errors: list[str]) -> None:
        judged = [b for b in self.benchmarks if self.judged(b)]
        judge = self.config["benchmark_judge"]
        for b in judged:
            if not is_task_yaml(self.config["benchmarks"][b]["task"]):
                errors.append(f"benchmarks.{b}.judge: a judge protocol needs a task YAML of this repo (beside its module)")
        if judged and not judge["model"]:
            errors.append(f"benchmark_judge.model: benchmarks {judged} are judged, name the judge model")
        elif judged and judge["backend"] != "openai" and judge["model"] not in self.models:
            errors.append(f"benchmark_judge.model: {judge['model']!r} is not in `models` (backend {judge['backend']})")

    def _check_questions(self, errors: list[str]) -> None:
        q, datasets = self.config["train_questions"], self.config["datasets"]
        if not q["files"] and not q["datasets"]:
            errors.append("train_questions: name at least one question file (files) or dataset (datasets)")
        for name in q["datasets"]:
            if name not in datasets:
                errors.append(f"train_questions.datasets: {name!r} is not in `datasets` ({sorted(datasets)})")
        for name, source in datasets.items():
            if "hub" in source and "revision" not in source:
                errors.append(f"datasets.{name}.revision: a Hub dataset needs a revision (a commit, to pin it)")
            if "hub" not in source and "revision" in source:
                errors.append(f"datasets.{name}.revision: only a Hub dataset (hub: owner/name) has a revision")

    def _check_plan(self, exp: Experiment, errors: list[str]) -> None:
        """A plan's teachers exist for every student; each step fits its r_max; the steps split."""
        key = f"experiments.{exp.name}"
        if not exp.train:
            return
        if not exp.plan:
            errors.append(f"{key}.plan: a trained experiment needs at least one teacher")
        for i, entry in enumerate(exp.plan):
            where = f"{key}.plan[{i}]"
            teacher = entry["teacher"]
            if teacher not in ROLES and teacher not in self.models:
                errors.append(f"{where}.teacher: unknown teacher {teacher!r} (a role {list(ROLES)} or a model"
                              f" in `models`: {sorted(self.models)})")
            elif teacher in ROLES:
                for student, roles in self.students.items():
                    if teacher not in (roles or {}):
                        errors.append(f"{where}.teacher: role {teacher!r} is not set for student {student!r}"
                                      f" (students.{student}.{teacher})")
            r_max, step = entry["r_max"], entry["step"]  # schema defaults filled in
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

    def _check_judge(self, exp: Experiment, errors: list[str]) -> None:
        """The LLM judge is a model, or a teacher role every student has."""
        model = exp.judge_model
        if exp.judge != "llm" or model is None or model in self.models:
            return
        key = f"experiments.{exp.name}.judge_model" if "judge_model" in (self.config["experiments"][exp.name] or {}) \
            else "judge.model"
        if model not in ROLES:
            errors.append(f"{key}: unknown judge {model!r} (a role {list(ROLES)} or a model in `models`:"
                          f" {sorted(self.models)})")
            return
        for student, roles in self.students.items():
            if model not in (roles or {}):
                errors.append(f"{key}: role {model!r} is not set for student {student!r} (students.{student}.{model})")

    def _check_backend(self, errors: list[str]) -> None:
        """Stages with their own training settings (LLaVA-KD's recipe: each trains other parts) run
        with the torch trainer only: a DeepSpeed run of one is refused here, not after its inputs."""
        if self.config["training"]["backend"] != "deepspeed":
            return
        for exp in dict.fromkeys(e for _, e, _ in self.runs()):
            for i, entry in enumerate(self.experiments[exp].plan):
                if entry.get("training"):
                    errors.append(f"experiments.{exp}.plan[{i}].training: stages with their own training settings run"
                                  f" with training.backend torch only, not deepspeed (a table or figure trains {exp!r})")

    def _check_tables(self, errors: list[str]) -> None:
        for b in self.benchmarks:
            column = self.column_of(b)
            if column != b and column in self.benchmarks:
                errors.append(f"benchmarks.{b}.column: {column!r} is the name of another benchmark; a shared"
                              " column needs a name of its own")
        groups = self.column_groups(self.benchmarks)
        for table, spec in self.tables.items():
            for b in spec.get("benchmarks") or []:
                if b not in self.benchmarks:
                    errors.append(f"tables.{table}.benchmarks: unknown benchmark {b!r} (known: {self.benchmarks})")
            shown = [b for b in spec.get("benchmarks") or [] if b in self.benchmarks]
            for column, members in self.column_groups(shown).items():
                if len(members) < len(groups[column]):
                    errors.append(f"tables.{table}.benchmarks: column {column!r} is the mean of {groups[column]};"
                                  f" list all of them or none (missing {[b for b in groups[column] if b not in members]})")
            for i, row in enumerate(spec["rows"]):
                where = f"tables.{table}.rows[{i}]"
                if "experiment" in row and row["experiment"] not in self.experiments:
                    errors.append(f"{where}.experiment: unknown experiment {row['experiment']!r}"
                                  f" (known: {sorted(self.experiments)})")
                if "model" in row and row["model"] not in self.models and row["model"] not in ROLES:
                    errors.append(f"{where}.model: unknown model {row['model']!r} (known: {sorted(self.models)})")
                if ("experiment" in row) == ("model" in row):
                    errors.append(f"{where}: give exactly one of `experiment` or `model`")

    def _check_fidelity(self, errors: list[str]) -> None:
        if self.config["fidelity"] and "fidelity" in self.tables:
            errors.append("tables.fidelity: the name is taken by the fidelity report (results/tables/fidelity)")
        if "judges" in self.tables:
            errors.append("tables.judges: the name is taken by the judge report (results/tables/judges)")
        for i, claim in enumerate(self.config["fidelity"]):
            where = f"fidelity[{i}]"
            if claim["table"] not in self.tables:
                errors.append(f"{where}.table: unknown table {claim['table']!r} (known: {sorted(self.tables)})")
                continue
            labels = [r["label"] for r in self.tables[claim["table"]]["rows"]]
            unknown = [label for label in claim["rows"] if label not in labels]
            if unknown:
                errors.append(f"{where}.rows: {unknown} are not rows of {claim['table']} ({labels})")
            wanted = {"increasing": "at least 2 rows", "best": "exactly 1 row (the winner)",
                      "peak_inside": "no rows (it reads the whole table)"}[claim["kind"]]
            if {"increasing": len(claim["rows"]) < 2, "best": len(claim["rows"]) != 1,
                    "peak_inside": bool(claim["rows"])}[claim["kind"]]:
                errors.append(f"{where}.rows: kind {claim['kind']} takes {wanted}")

    def _check_figures(self, errors: list[str]) -> None:
        for fig, spec in self.config["figures"].items():
            for name in self.figure_experiments(fig):
                if name not in self.experiments:
                    errors.append(f"figures.{fig}: unknown experiment {name!r} (known: {sorted(self.experiments)})")
                elif fig == "curves" and not self.experiments[name].train:
                    errors.append(f"figures.curves: {name!r} is not trained (no steps to follow)")
            if "table" in spec and spec["table"] not in self.tables:
                errors.append(f"figures.{fig}.table: unknown table {spec['table']!r} (known: {sorted(self.tables)})")

    # ---------------------------------------------------------------- stages and runs

    def teacher_of(self, student: str, teacher: str) -> str:
        """A plan's teacher (a role or a model name) as the model name for ``student``."""
        return self.students[student][teacher] if teacher in ROLES else teacher

    def _stage_plan(self, exp: Experiment):
        return plan_stages(exp.plan, int(exp.training["steps"]))

    def stages(self, student: str, experiment: str) -> list[StageJob]:
        exp = self.experiments[experiment]
        if not exp.train:
            return []
        planned = self._stage_plan(exp)
        settings = [stage_settings(entry.get("training") or {})
                    for entry in exp.plan for _ in ratios(entry["r_max"], entry["step"])]  # one per stage
        out = []
        for k, st in enumerate(planned):
            part = "all" if exp.stage_data == "full" else f"{k}of{len(planned)}"
            out.append(StageJob(k, self.teacher_of(student, st.teacher), st.ratio, st.iters, part, settings[k]))
        return out

    def column_of(self, benchmark: str) -> str:
        """The table column of ``benchmark``'s score (``benchmarks.<name>.column``, default its name)."""
        return self.config["benchmarks"][benchmark].get("column", benchmark)

    def column_groups(self, benchmarks: list[str]) -> dict[str, list[str]]:
        """Table columns in order of first appearance, each with the benchmarks averaged into it."""
        groups: dict[str, list[str]] = {}
        for b in benchmarks:
            groups.setdefault(self.column_of(b), []).append(b)
        return groups

    def table_benchmarks(self, table: str) -> list[str]:
        """The benchmarks a table shows (``tables.<t>.benchmarks``, default all), in config order."""
        return list(self.tables[table].get("benchmarks") or self.benchmarks)

    def table_seeds(self, table: str) -> list[int]:
        return list(self.tables[table].get("seeds") or self.config["seeds"])

    def figure_experiments(self, figure: str) -> list[str]:
        spec = self.config["figures"].get(figure, {})
        return list(spec.get("experiments", [])) + list((spec.get("compare") or {}).values())

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (student, experiment, seed) a table or figure needs, in a stable order."""
        out: dict[tuple[str, str, int], None] = {}
        for table in self.tables:
            for row in self.tables[table]["rows"]:
                exp = row.get("experiment")
                if exp and self.experiments[exp].train:
                    for student in self.students:
                        for seed in self.table_seeds(table):
                            out[(student, exp, seed)] = None
        for fig in self.config["figures"]:
            for exp in self.figure_experiments(fig):
                if self.experiments[exp].train:
                    for student in self.students:
                        out[(student, exp, self.figure_seed())] = None
        return list(out)

    def figure_seed(self) -> int:
        return int(self.config["seeds"][0])

    # ---------------------------------------------------------------- paths (masters.paths)

    def path(self, name: str, **values) -> str:
        return paths.path(self.results, name, **values)

    def model_dir(self, name: str) -> str:
        """A local model's directory as configured; a Hub model's snapshot (the `snapshot` rule)."""
        source = self.models[name]
        if isinstance(source, dict):
            return self.path("hub_model", model=name)
        return source.format(results=self.results)

    def hub_models(self) -> dict[str, dict]:
        """The models fetched from the Hub: name -> {hub, revision[, allow_patterns]}."""
        return {name: source for name, source in self.models.items() if isinstance(source, dict)}

    def hub_benchmarks(self) -> list[str]:
        """The benchmarks whose data is fetched from the Hub: no ``data``, and a task YAML of this repo
        or ``fetch: true`` (a task or group lm-eval ships: ``chartqa``, ``mmmu_val``); the others lm-eval loads."""
        return [b for b, entry in self.config["benchmarks"].items() if "data" not in entry
                and entry.get("fetch", is_task_yaml(entry["task"]))]

    def uses_world(self) -> bool:
        """Whether any model lives in the embedded tiny world (else the world is not built)."""
        world = self.path("world_model", model="X").rsplit("/", 1)[0] + "/"
        return any(self.model_dir(m).startswith(world) for m in self.models)

    def dataset_source(self, name: str) -> dict:
        """A ``datasets`` entry with ``{results}`` filled into its local file paths."""
        source = dict(self.config["datasets"][name])
        if "hub" not in source:
            source["files"] = [f.format(results=self.results) for f in source["files"]]
        return source

    def question_files(self) -> list[str]:
        """The question files the training questions are drawn from: files, then datasets."""
        q = self.config["train_questions"]
        return ([f.format(results=self.results) for f in q["files"]]
                + [self.path("dataset", dataset=d) for d in q["datasets"]])

    def teacher_dir(self, model: str, ratio: float) -> str:
        """The masked teacher; ratio 0 is the unmasked teacher's own checkpoint (no copy)."""
        if ratio_str(ratio) == "0.00":
            return self.model_dir(model)
        return self.path("masked", model=model, ratio=ratio_str(ratio))

    def questions(self) -> str:
        return self.path("questions")

    def responses(self, source: str, model: str, ratio: float, n: int, seed: int, part: str, judge: str | None = None
                  ) -> str:
        values = dict(source=source, model=model, ratio=ratio_str(ratio), n=n, seed=seed, part=part)
        return self.path("responses", **values) if judge is None else self.path("judged", judge=judge, **values)

    def judge_key(self, exp: Experiment, student: str) -> str:
        """``rule``, or ``llm-<judge model>`` (the student by default, App. F.7)."""
        if exp.judge == "rule":
            return "rule"
        return f"llm-{self.teacher_of(student, exp.judge_model) if exp.judge_model else student}"

    def reward_file(self, student: str, experiment: str, stage: StageJob, seed: int) -> str:
        """The rewarded responses a stage trains on. No reward enters a JSD-only loss (its runs
        read the responses and pi_ref log-probs alone), so those read the rule judge's file:
        no LLM judge job runs for them."""
        exp = self.experiments[experiment]
        labels = exp.data == "labels"
        judge = "rule" if exp.loss == "jsd" else self.judge_key(exp, student)
        return self.path("rewards", student=student, teacher=stage.teacher, ratio=ratio_str(stage.ratio),
                         data=paths.data_key(labels, exp.n_teacher, exp.n_student),
                         seed=0 if labels else seed,  # the dataset answers do not depend on the seed
                         part=stage.part, judge=judge, distill=exp.distill,
                         use=exp.reward, alpha=paths.alpha_str(exp.alpha))

    def group_responses(self, student: str, teacher: str, ratio: str, data: str, seed: int, part: str,
                        judge: str | None = None) -> list[str]:
        """The response files of one stage group (judged by ``judge``, or raw): the dataset
        answers, or the teacher's and the student's responses from the sources with n > 0
        (R_distill is normalized and advantages computed over the group trained on)."""
        counts = paths.parse_data_key(data)
        if counts is None:
            return [self.responses("label", student, 0.0, 1, 0, part, judge=judge)]
        return [self.responses(source, model, r, n, seed, part, judge=judge)
                for source, model, r, n in (("teacher", teacher, float(ratio), counts[0]),
                                            ("student", student, 0.0, counts[1])) if n > 0]

    def scores_file(self, student: str, teacher: str, ratio: str, data: str, seed: int, part: str) -> str:
        """D and pi_ref log-probs of one stage group's responses, shared by every reward setting."""
        return self.path("scores", student=student, teacher=teacher, ratio=ratio_str(float(ratio)), data=data,
                         seed=seed, part=part)

    def score_inputs(self, student: str, teacher: str, ratio: str, data: str, seed: int, part: str) -> dict[str, Any]:
        """What scoring one stage group reads: its raw responses, the stage's (masked) teacher, pi_ref."""
        return {"responses": self.group_responses(student, teacher, ratio, data, seed, part),
                "teacher": self.teacher_dir(teacher, float(ratio)), "student": self.model_dir(student),
                "questions": self.questions()}

    def reward_inputs(self, student: str, teacher: str, ratio: str, data: str, seed: int, part: str,
                      judge: str) -> dict[str, Any]:
        """What one rewarded stage group reads (the reward path's wildcards in, no name parsing):
        its judged responses and their scores."""
        return {"responses": self.group_responses(student, teacher, ratio, data, seed, part, judge=judge),
                "scores": self.scores_file(student, teacher, ratio, data, seed, part)}

    def train_dir(self, student: str, experiment: str, seed: int) -> str:
        return self.path("students", student=student, experiment=experiment, seed=seed)

    def judged(self, benchmark: str) -> bool:
        """Whether ``benchmark``'s score comes from its judge protocol (``judge:``)."""
        return bool(self.config["benchmarks"][benchmark].get("judge"))

    def evaluation(self, run: str, benchmark: str) -> str:
        """The summary the tables read: the evaluation's, or its judged one."""
        kind = "judged_evaluation" if self.judged(benchmark) else "evaluation"
        return self.path(kind, run=run, benchmark=benchmark)

    # ---------------------------------------------------------------- evaluation runs

    def run_of_row(self, row: dict, student: str, seed: int) -> str:
        """The evaluation run id of a table row for ``student`` and ``seed``."""
        if "model" in row:
            return paths.run("model", model=self.teacher_of(student, row["model"]))
        exp = self.experiments[row["experiment"]]
        if not exp.train:
            return paths.run("model", model=student)
        return paths.run("checkpoint", student=student, experiment=exp.name, seed=seed, checkpoint="final")

    def stage_run(self, student: str, experiment: str, index: int) -> str:
        """The evaluation run of stage ``index``'s checkpoint (the last stage's is ``final``)."""
        last = len(self.stages(student, experiment)) - 1
        return paths.run("checkpoint", student=student, experiment=experiment, seed=self.figure_seed(),
                         checkpoint="final" if index == last else f"stage{index}")

    def eval_runs(self) -> list[str]:
        """Every evaluation run the tables and figures read."""
        out: dict[str, None] = {}
        for table, spec in self.tables.items():
            for row in spec["rows"]:
                for student in self.students:
                    for seed in self.table_seeds(table):
                        out[self.run_of_row(row, student, seed)] = None
        fig2 = self.config["figures"].get("fig2", {})
        for exp in fig2.get("experiments", []):
            for student in self.students:
                for st in self.stages(student, exp):
                    out[self.stage_run(student, exp, st.index)] = None
        for exp in (fig2.get("compare") or {}).values():
            for student in self.students:
                out[self.run_of_row({"experiment": exp}, student, self.figure_seed())] = None
        for teacher, ratio in self.figf4_teachers():
            out[self.masked_run(teacher, ratio)] = None
        return list(out)

    def masked_run(self, teacher: str, ratio: float) -> str:
        """The evaluation run of ``teacher`` masked at ``ratio`` (ratio 0: the teacher itself)."""
        return paths.run("model", model=teacher) if ratio == 0 else \
            paths.run("masked", model=teacher, ratio=ratio_str(ratio))

    def figf4_teachers(self) -> list[tuple[str, float]]:
        """Every (teacher, ratio) of the stages of Fig. F.4's runs, in stage order."""
        out: dict[tuple[str, float], None] = {}
        for exp in self.config["figures"].get("figF4", {}).get("experiments", []):
            for student in self.students:
                for st in self.stages(student, exp):
                    out[(st.teacher, st.ratio)] = None
        return list(out)

    def is_teacher_run(self, run: str) -> bool:
        """Whether an evaluation run is a model's own checkpoint (masked or not) other than a student's."""
        kind, v = paths.parse_run(run)
        return kind in ("model", "masked") and v["model"] not in self.students

    def parse_run(self, run: str) -> dict[str, Any]:
        """``models/L`` -> the model's checkpoint; ``S/masters/s0/final`` -> a trained checkpoint."""
        try:
            kind, v = paths.parse_run(run)
        except paths.PathError as error:
            raise DesignError(str(error)) from None
        if kind in ("model", "masked"):
            if v["model"] not in self.models:
                raise DesignError(f"not an evaluation run: {run!r} ({v['model']!r} is not in `models`)")
            if kind == "masked":
                return {"model_dir": self.teacher_dir(v["model"], float(v["ratio"])), "train_dir": None,
                        "label": f"{v['model']} r={v['ratio']}"}
            return {"model_dir": self.model_dir(v["model"]), "train_dir": None, "label": v["model"]}
        train_dir = self.train_dir(v["student"], v["experiment"], int(v["seed"]))
        return {"model_dir": f"{train_dir}/{v['checkpoint']}", "train_dir": train_dir, "label": run}

    def mask_jobs(self) -> list[tuple[str, float]]:
        """Every (teacher model, ratio > 0) a needed run trains against."""
        out: dict[tuple[str, str], None] = {}
        for student, exp, _seed in self.runs():
            for st in self.stages(student, exp):
                if ratio_str(st.ratio) != "0.00":
                    out[(st.teacher, ratio_str(st.ratio))] = None
        return [(m, float(r)) for m, r in out]


def part_shard(part: str) -> tuple[int, int]:
    """``"all"`` -> (0, 1); ``"2of5"`` -> (2, 5): the question shard of a stage (stage data)."""
    if part == "all":
        return 0, 1
    shard, _, num = part.partition("of")
    if not (shard.isdigit() and num.isdigit()) or int(shard) >= int(num):
        raise DesignError(f"not a question part: {part!r}")
    return int(shard), int(num)
