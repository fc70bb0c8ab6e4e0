"""Generation → distillation reward → offline training on tiny checkpoints, incl. resume."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from masters import generation, rewards, training
from masters.checkpoints import load_checkpoint, save_checkpoint
from masters.losses import LossWeights
from masters.world import models
from tests.conftest import TINY


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer, processor, items):
    root = tmp_path_factory.mktemp("pipe")
    for name, multiple, seed in (("teacher", 64, 1), ("student", 128, 2)):
        model = models.build_model("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=multiple), tokenizer, seed=seed)
        save_checkpoint(model, processor, root / name)
    questions = items.groupby("task").head(2).reset_index(drop=True)
    return root, questions


def _generate(root, questions, out, source, **sampling):
    backend = generation.HFBackend(root / source)
    params = generation.SamplingParams(**{"n": 3, "max_new_tokens": 6, "seed": 5, **sampling})
    return generation.generate_responses(backend, questions, params, out, source=source, model_name=source,
                                         ratio=0.0, batch_size=4, progress=False)


def _interrupted_generation(root, questions, out, monkeypatch, **sampling):
    """A generation killed after its first batch: its parts directory is left behind."""
    real = generation.HFBackend.generate
    calls = []

    def generate(self, chunk, *args):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(self, chunk, *args)

    with monkeypatch.context() as m:
        m.setattr(generation.HFBackend, "generate", generate)
        with pytest.raises(KeyboardInterrupt):
            _generate(root, questions, out, "teacher", **sampling)
    parts = out.with_name(out.name + ".parts")
    assert sorted(p.name for p in parts.iterdir()) == ["fingerprint.json", "part-000000.parquet"]
    return parts


def test_generation_writes_schema_and_resumes_identically(world, tmp_path, monkeypatch):
    root, questions = world
    full = _generate(root, questions, tmp_path / "a.parquet", "teacher")
    assert list(full.columns) == generation.RESPONSE_COLUMNS
    assert len(full) == 3 * len(questions)
    assert (full.num_tokens == full.token_ids.map(len)).all()
    assert set(full.finish_reason) <= {"stop", "length"}
    _interrupted_generation(root, questions, tmp_path / "b.parquet", monkeypatch)  # killed after batch 0
    resumed = _generate(root, questions, tmp_path / "b.parquet", "teacher")
    pd.testing.assert_frame_equal(full, resumed)
    assert not (tmp_path / "b.parquet.parts").exists()


def test_each_generating_model_and_ratio_draws_its_own_samples(world, tmp_path):
    """The same weights generating as another ratio or source (or another model name) sample
    other responses; the same generation again gives the same ones. The seed once depended on
    the run's seed and the batch only, so sample j of every masked teacher of a model drew the
    same random numbers, and their responses were nearly copies (98.8 % identical texts)."""
    root, questions = world
    backend = generation.HFBackend(root / "teacher")
    params = generation.SamplingParams(n=3, max_new_tokens=6, seed=5)

    def run(name, source="teacher", ratio=0.0, model="T"):
        return generation.generate_responses(backend, questions, params, tmp_path / f"{name}.parquet", source=source,
                                             model_name=model, ratio=ratio, batch_size=4, progress=False)

    base = run("base")
    pd.testing.assert_frame_equal(base, run("again"))
    for other in (run("ratio", ratio=0.2), run("source", source="student"), run("model", model="T2")):
        same = (other.token_ids.map(tuple) == base.token_ids.map(tuple)).mean()
        assert same < 0.5, same


def test_label_responses_are_the_answers(world, processor):
    _, questions = world
    labels = generation.label_responses(questions, processor.tokenizer)
    assert list(labels.columns) == generation.RESPONSE_COLUMNS and len(labels) == len(questions)
    decoded = [processor.tokenizer.decode(ids) for ids in labels.token_ids]
    assert decoded == [a + "<|im_end|>" for a in questions.answer]


def test_missing_question_column_is_named(world, tmp_path):
    root, questions = world
    with pytest.raises(KeyError, match="image"):
        _generate(root, questions.drop(columns=["image"]), tmp_path / "x.parquet", "student")


@pytest.fixture(scope="module")
def rewarded(world, tmp_path_factory):
    root, questions = world
    out = tmp_path_factory.mktemp("rewarded")
    frames = [_generate(root, questions, out / f"{s}.parquet", s) for s in ("teacher", "student")]
    rows = pd.concat(frames, ignore_index=True).merge(questions[["id", "image", "question"]], left_on="question_id", right_on="id")
    teacher, t_proc = load_checkpoint(root / "teacher")
    student, s_proc = load_checkpoint(root / "student")
    divergences, ref_logprobs = rewards.score_responses(teacher, student, t_proc, s_proc, rows, batch_size=5, chunk_size=7)
    rows["divergence"], rows["ref_logprobs"] = divergences, ref_logprobs
    rows["r_acc"] = (rows.index % 2).astype(float)
    rows = rewards.group_rewards(rows, normalize=True, alpha=1.0, use_acc=True, use_distill=True)
    path = out / "rewards.parquet"
    rows.drop(columns=["image", "question", "id"]).to_parquet(path)
    return rows, path, (teacher, student, t_proc, s_proc)


def test_divergences_match_a_direct_full_forward(rewarded):
    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    from masters.forward import build_batch_from_rows

    row = rows.iloc[[3]]
    batch = build_batch_from_rows(s_proc, row)
    with torch.no_grad():
        t_logits = teacher(**batch.inputs).logits[batch.predicts_response]
        s_logits = student(**batch.inputs).logits[batch.predicts_response]
    vocab = len(s_proc.tokenizer)
    assert t_logits.shape[-1] != s_logits.shape[-1], "teacher and student pad the vocabulary differently"
    p = torch.softmax(t_logits[:, :vocab].double(), -1)
    q = torch.softmax(s_logits[:, :vocab].double(), -1)
    m = (p + q) / 2
    direct = (0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)).mean()
    assert rows.divergence.iloc[3] == pytest.approx(direct.item(), abs=1e-5)
    logp = torch.log_softmax(s_logits[:, :vocab].double(), -1).gather(1, batch.targets[:, None]).squeeze(1)
    assert rows.ref_logprobs.iloc[3] == pytest.approx(logp.tolist(), abs=1e-5)


def test_rewards_are_normalized_per_group(rewarded):
    rows, _, _ = rewarded
    for _, group in rows.groupby("question_id"):
        assert group.r_distill.max() == pytest.approx(1.0) and group.r_distill.min() == pytest.approx(0.0)
        assert group.loc[group.divergence.idxmin(), "r_distill"] == pytest.approx(1.0)
    assert (rows.r_total == rows.r_acc + rows.r_distill).all()


def _stages(world, rewarded, ratios=(0.1, 0.0), steps=3):
    """Stages against the world's teacher at these ratios, each on the rewarded responses."""
    root, _ = world
    _, path, _ = rewarded
    return [training.Stage(str(root / "teacher"), str(path), steps=steps, ratio=r, name=f"r{r:.2f}") for r in ratios]


def _run(world, stages, cfg, out, student="student", **kw):
    """training.train of the world's student (or another checkpoint of the world) into ``out``."""
    root, questions = world
    return training.train(str(root / student), stages, questions, cfg, str(out), progress=False, **kw)


def _train(world, rewarded, out, max_steps=None, kind="masters", curve_every=0):
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, save_every=2, seed=3, weights=LossWeights(kind=kind),
                               curve_every=curve_every)
    return _run(world, _stages(world, rewarded), cfg, out, max_steps=max_steps)


def test_training_resumes_to_the_same_weights(world, rewarded, tmp_path):
    log = _train(world, rewarded, tmp_path / "straight")
    assert list(log.step) == list(range(1, 7)) and set(log.stage) == {0, 1}
    assert log[["loss", "pg", "kl", "jsd"]].notna().all().all()
    assert (tmp_path / "straight/stage0/model.safetensors").is_file()
    _train(world, rewarded, tmp_path / "killed", max_steps=3)  # stops mid-stage 1 (saved at step 2)
    assert not (tmp_path / "killed").exists(), "an unfinished run must not look finished"
    assert (tmp_path / "killed.partial/resume/trainer_state.json").is_file()
    resumed = _train(world, rewarded, tmp_path / "killed")
    assert not (tmp_path / "killed.partial").exists() and not (tmp_path / "straight/resume").exists()
    a = load_file(tmp_path / "straight/final/model.safetensors")
    b = load_file(tmp_path / "killed/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(log.reset_index(drop=True), resumed.reset_index(drop=True), check_dtype=False)
    student = load_file(world[0] / "student/model.safetensors")
    assert any(not torch.equal(a[k], student[k]) for k in a), "training changed nothing"


def test_the_first_logged_step_is_step_loss_on_its_batch(world, rewarded, tmp_path):
    """train() computes its loss over the tokenizer's vocabulary (the student's head is padded
    wider) on the batch batch_order picks, against the stage's teacher."""
    root, questions = world
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, seed=3, weights=LossWeights(beta=0.1, lam=0.5))
    [stage] = _stages(world, rewarded, ratios=[0.1], steps=1)
    out = tmp_path / "runs/S/out"  # its parent is made too
    log = _run(world, [stage], cfg, out)
    assert pd.read_csv(out / "train_log.csv").columns.tolist() == training.LOG_COLUMNS
    student, s_proc = load_checkpoint(root / "student")
    teacher, t_proc = load_checkpoint(root / "teacher")
    rows = training.load_stage_rows(stage, questions, cfg.sources)
    batch = rows.iloc[training.batch_order(len(rows), cfg.batch_size, cfg.seed, 0, 0)]
    vocab = len(s_proc.tokenizer)
    assert student.get_output_embeddings().weight.shape[0] > vocab
    student.train()
    expected = training.step_loss(student, teacher.eval(), s_proc, t_proc, batch, cfg, vocab)
    assert log.loc[0, ["loss", "pg", "kl", "jsd"]].tolist() == pytest.approx(
        [expected[k] for k in ("loss", "pg", "kl", "jsd")], rel=1e-6, abs=1e-9)
    assert log.loc[0, ["step", "stage", "teacher", "ratio", "lr"]].tolist() == [1, 0, "r0.10", 0.1, 1e-3]
    means = batch[["r_acc", "r_distill", "r_total"]].mean()  # the batch's own rewards
    assert log.loc[0, ["r_acc", "r_distill", "r_total"]].tolist() == pytest.approx(means.tolist())
    assert means["r_acc"] != means["r_distill"] != means["r_total"]
    empty = _run(world, [stage], cfg, tmp_path / "none", max_steps=0)
    assert empty.empty and empty.columns.tolist() == training.LOG_COLUMNS


def test_responses_without_reward_parts_log_them_as_missing(world, rewarded, tmp_path):
    """r_acc and r_distill are optional columns of a stage's responses: without them the log
    holds NaN there, and r_total as given."""
    root, questions = world
    _, path, _ = rewarded
    bare = tmp_path / "bare.parquet"
    pd.read_parquet(path).drop(columns=["r_acc", "r_distill"]).to_parquet(bare)
    stage = training.Stage(str(root / "teacher"), str(bare), steps=1, ratio=0.0, name="r0.00")
    log = _run(world, [stage], training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, seed=3), tmp_path / "out")
    assert log[["r_acc", "r_distill"]].isna().all().all() and log["r_total"].notna().all()


def test_a_run_saved_after_its_first_step_resumes_with_that_step_logged(world, rewarded, tmp_path):
    stages, cfg = _stages(world, rewarded, ratios=[0.1]), training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5,
                                                                                save_every=1, seed=3)
    run = lambda out, **kw: _run(world, stages, cfg, tmp_path / out, **kw)  # noqa: E731
    straight = run("straight")
    run("killed", max_steps=1)
    resumed = run("killed")
    assert list(resumed.step) == [1, 2, 3]
    pd.testing.assert_frame_equal(straight, resumed, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "killed/train_log.csv"), pd.read_csv(
        tmp_path / "straight/train_log.csv"))


def test_a_partial_run_of_another_student_is_not_resumed(world, rewarded, tmp_path, capsys):
    stages, cfg = _stages(world, rewarded, ratios=[0.1]), training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5,
                                                                                save_every=1, seed=3)
    run = lambda student, out, **kw: _run(world, stages, cfg, tmp_path / out, student=student, **kw)  # noqa: E731
    run("student", "out", max_steps=2)
    log = run("teacher", "out")  # the teacher's checkpoint as the student: another run, from scratch
    assert "starting afresh" in capsys.readouterr().out and list(log.step) == [1, 2, 3]
    run("teacher", "straight")
    a, b = load_file(tmp_path / "out/final/model.safetensors"), load_file(tmp_path / "straight/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_fingerprint_tells_apart_student_stages_and_settings(world, rewarded):
    root, _ = world
    _, path, _ = rewarded
    stage = training.Stage(str(root / "teacher"), str(path), steps=3, ratio=0.1, name="r0.10")
    cfg = training.TrainConfig()
    key = training.fingerprint(str(root / "student"), [stage], cfg)
    assert key == training.fingerprint(str(root / "student"), [stage], training.TrainConfig())
    others = [training.fingerprint(str(root / "teacher"), [stage], cfg),
              training.fingerprint(str(root / "student"), [stage, stage], cfg),
              training.fingerprint(str(root / "student"), [training.Stage(stage.teacher, stage.responses, 4)], cfg),
              training.fingerprint(str(root / "student"), [stage], training.TrainConfig(lr=0.5)),
              training.fingerprint(str(root / "student"), [stage], training.TrainConfig(weights=LossWeights(divergence="srkl"))),
              training.fingerprint(str(root / "student"), [stage],
                                   training.TrainConfig(weights=LossWeights(divergence="srkl", skew=0.2))),
              *(training.fingerprint(str(root / "student"), [stage], training.TrainConfig(weights=LossWeights(**{k: 0.5})))
                for k in ("visual_kl", "rdist", "nll")),
              training.fingerprint(str(root / "student"), [stage], training.TrainConfig(frozen=("vision",))),
              training.fingerprint(str(root / "student"), [replace(stage, settings=(("nll", 1.0),))], cfg)]
    assert len({key, *others}) == 12
    # the skew of a JSD run changes nothing, and a JSD run keeps the fingerprint it had before
    # the divergence settings existed (its partial runs still resume)
    assert key == training.fingerprint(str(root / "student"), [stage], training.TrainConfig(weights=LossWeights(skew=0.3)))
    from dataclasses import asdict

    from masters.checkpoints import fingerprint as hash_of

    before = asdict(cfg)
    before["weights"] = {k: before["weights"][k] for k in ("beta", "lam", "kind")}
    del before["frozen"]
    stage_before = {k: v for k, v in asdict(stage).items() if k != "settings"}  # before per-stage settings
    assert key == hash_of({"student": str(root / "student"), "stages": [stage_before], "config": before})


def test_partial_run_of_other_settings_is_not_resumed(world, rewarded, tmp_path):
    _train(world, rewarded, tmp_path / "other", max_steps=3, kind="jsd")  # a partial jsd-only run
    log = _train(world, rewarded, tmp_path / "other")  # the masters loss: must start afresh
    a = load_file(tmp_path / "other/final/model.safetensors")
    _train(world, rewarded, tmp_path / "straight")
    b = load_file(tmp_path / "straight/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and list(log.step) == list(range(1, 7))


def test_tokenizer_mismatch_is_an_error(world, rewarded, tmp_path, items):
    from masters.world.tokenizer import train_tokenizer

    root, questions = world
    other = train_tokenizer(["completely different corpus"] * 10, vocab_size=300)
    proc = models.build_processor(other, "qwen2_5_vl", 56)
    model = models.build_model("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=64), other, seed=0)
    save_checkpoint(model, proc, tmp_path / "alien")
    _, path, _ = rewarded
    stages = [training.Stage(str(tmp_path / "alien"), str(path), steps=1)]
    with pytest.raises(ValueError, match="tokenizers differ"):
        training.train(str(root / "student"), stages, questions, training.TrainConfig(), str(tmp_path / "o"), progress=False)


def test_cli_chain_generate_judge_reward_train(world, tmp_path):
    """The subcommands the rules call, chained on files: generate -> judge -> score -> reward -> train."""
    from masters.cli import main
    from masters.world import vqa

    root, questions = world
    qfile = tmp_path / "questions.parquet"
    vqa.write_parquet(questions.to_dict("records"), qfile)
    common = ["--questions", str(qfile), "--limit", "4"]
    main(["mask", "--teacher", str(root / "teacher"), "--r-max", "0.1", "--step", "0.05", "--out", str(tmp_path / "masked"),
          "--quiet"])
    assert sorted(p.name for p in (tmp_path / "masked").iterdir() if p.is_dir()) == [
        "masked_r0.00", "masked_r0.05", "masked_r0.10"]
    teacher = tmp_path / "masked/masked_r0.10"
    for source, model in (("teacher", teacher), ("student", root / "student")):
        main(["generate", "--model", str(model), "--source", source, "--ratio", "0.1" if source == "teacher" else "0",
              "--n", "2", "--max-new-tokens", "5", "--batch-size", "2", "--out", str(tmp_path / f"{source}.parquet"),
              *common])
    assert set(pd.read_parquet(tmp_path / "teacher.parquet").ratio) == {0.1}
    main(["judge", "--responses", str(tmp_path / "teacher.parquet"), "--questions", str(qfile), "--kind", "rule",
          "--out", str(tmp_path / "teacher_j.parquet")])
    main(["judge", "--responses", str(tmp_path / "student.parquet"), "--questions", str(qfile), "--kind", "llm",
          "--judge-model", str(root / "student"), "--max-new-tokens", "4", "--out", str(tmp_path / "student_j.parquet")])
    judged = pd.read_parquet(tmp_path / "student_j.parquet")
    # an untrained judge never writes the <answer> tag: every item takes the second prompt and fails
    assert judged.judge_parse_failed.all() and (judged.r_acc == 0).all()
    assert judged.judge_raw.str.contains("---").all(), "both raw judge outputs are kept"
    main(["score", "--responses", str(tmp_path / "teacher.parquet"), str(tmp_path / "student.parquet"),
          "--questions", str(qfile), "--teacher", str(teacher), "--student", str(root / "student"),
          "--chunk-size", "3", "--out", str(tmp_path / "scores.parquet")])
    main(["reward", "--responses", str(tmp_path / "teacher_j.parquet"), str(tmp_path / "student_j.parquet"),
          "--scores", str(tmp_path / "scores.parquet"), "--out", str(tmp_path / "rewards.parquet")])
    rewarded = pd.read_parquet(tmp_path / "rewards.parquet")
    assert len(rewarded) == 16 and rewarded.groupby("question_id").size().eq(4).all()
    # the judged student's replies failed to parse (r_acc 0): R = R_distill of the 4-response group
    assert rewarded.r_total.tolist() == pytest.approx((rewarded.r_acc + rewarded.r_distill).tolist())
    assert rewarded.groupby("question_id").r_distill.max().eq(1.0).all()
    # a reward setting of the same responses reads the same scores: only R changes
    main(["reward", "--responses", str(tmp_path / "teacher_j.parquet"), str(tmp_path / "student_j.parquet"),
          "--scores", str(tmp_path / "scores.parquet"), "--reward", "acc", "--out", str(tmp_path / "acc.parquet")])
    acc = pd.read_parquet(tmp_path / "acc.parquet")
    assert acc.divergence.equals(rewarded.divergence) and acc.r_total.equals(acc.r_acc)
    main(["train", "--student", str(root / "student"), "--questions", str(qfile),
          "--stage", "T", str(teacher), str(tmp_path / "rewards.parquet"), "2", "0.1",
          "--lr", "1e-3", "--batch-size", "4", "--out", str(tmp_path / "run")])
    log = pd.read_csv(tmp_path / "run/train_log.csv")
    assert list(log.step) == [1, 2]
    assert (tmp_path / "run/final/model.safetensors").is_file()


def test_bad_cli_inputs_name_the_problem(world, tmp_path):
    from masters.cli import main

    root, questions = world
    bad = tmp_path / "responses.parquet"
    pd.DataFrame({"question_id": ["x"], "text": ["red"]}).to_parquet(bad)
    qfile = tmp_path / "q.parquet"
    questions.drop(columns=["answer"]).to_parquet(qfile)
    with pytest.raises(KeyError, match=r"responses.parquet: missing column\(s\) \['source', 'sample_idx', 'token_ids'\]"):
        main(["score", "--responses", str(bad), "--questions", str(qfile), "--teacher", str(root / "teacher"),
              "--student", str(root / "student"), "--out", str(tmp_path / "o.parquet")])
    with pytest.raises(KeyError, match="question ids not in the questions"):
        main(["judge", "--responses", str(bad), "--questions", str(qfile), "--kind", "rule", "--out", str(tmp_path / "j.parquet")])


def test_sigkilled_training_resumes_to_the_same_weights(world, rewarded, tmp_path):
    """A real `masters train` process killed mid-run (SIGKILL) resumes to the uninterrupted weights."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from masters.world import vqa

    root, questions = world
    _, path, _ = rewarded
    qfile = tmp_path / "q.parquet"
    vqa.write_parquet(questions.to_dict("records"), qfile)

    def command(out):
        return [sys.executable, "-m", "masters.cli", "train", "--student", str(root / "student"), "--questions", str(qfile),
                "--stage", "T", str(root / "teacher"), str(path), "24", "0.0", "--lr", "1e-3", "--batch-size", "4",
                "--save-every", "1", "--seed", "3", "--out", str(out)]

    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = tmp_path / "killed.partial/resume"

    def saved_step():  # what a resume would settle on (training.settle_state), read without moving anything
        for where in (resume, resume.with_name("resume.tmp"), resume.with_name("resume.old")):
            try:
                return json.loads((where / "trainer_state.json").read_text())["step"]
            except FileNotFoundError:
                continue
        return 0

    deadline = time.time() + 120
    while time.time() < deadline and saved_step() < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = saved_step()
    assert 5 <= killed_at < 24, "the kill must land mid-run"
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True)
    assert resumed.returncode == 0, f"killed at step {killed_at}; the resume failed:\n{resumed.stderr[-3000:]}"
    a = load_file(tmp_path / "straight/final/model.safetensors")
    b = load_file(tmp_path / "killed/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = pd.read_csv(tmp_path / "killed/train_log.csv")
    assert list(log.step) == list(range(1, 25))


def test_a_resumed_run_runs_only_the_remaining_steps(world, rewarded, tmp_path, monkeypatch):
    """A resume that provably resumes: a run from scratch would end with the same weights too."""
    _train(world, rewarded, tmp_path / "run", max_steps=5)  # stage 0 (3 steps) + 2; state saved at step 4
    calls = []
    real = training.step_loss
    monkeypatch.setattr(training, "step_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    log = _train(world, rewarded, tmp_path / "run")
    assert len(calls) == 2, "steps 5-6 only: the resume must start after the saved step 4"
    assert list(log.step) == list(range(1, 7))


def test_a_run_stopped_at_a_stage_end_resumes_at_the_next_stage(world, rewarded, tmp_path, monkeypatch):
    """Three stages of 2 steps, saved only at stage ends: stopped after stage 0, the rerun runs
    the 4 steps of stages 1 and 2 (each stage its own steps), and a rerun into a finished output
    replaces it."""
    stages = _stages(world, rewarded, ratios=(0.2, 0.1, 0.0), steps=2)
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, save_every=100, seed=3)
    run = lambda **kw: _run(world, stages, cfg, tmp_path / "run", **kw)  # noqa: E731
    run(max_steps=2)
    calls = []
    real = training.step_loss
    monkeypatch.setattr(training, "step_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    log = run()
    assert len(calls) == 4 and list(log.step) == list(range(1, 7)) and list(log.stage) == [0, 0, 1, 1, 2, 2]
    first = load_file(tmp_path / "run/final/model.safetensors")
    again = run()  # the finished output is replaced by a new run (a partial state is gone: from scratch)
    assert len(calls) == 10 and list(again.step) == list(range(1, 7))
    second = load_file(tmp_path / "run/final/model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_tampered_resume_state_shows_in_the_result(world, rewarded, tmp_path):
    """The saved weights are what training continues from: tamper with them and the result moves."""
    from safetensors.torch import save_file

    for name in ("clean", "tampered"):
        _train(world, rewarded, tmp_path / name, max_steps=2)  # state saved at step 2
    state = tmp_path / "tampered.partial/resume/model.safetensors"
    weights = load_file(state)
    key = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    weights[key] = weights[key] + 0.5
    save_file(weights, state)
    logs = {name: _train(world, rewarded, tmp_path / name) for name in ("clean", "tampered")}
    a = load_file(tmp_path / "clean/final/model.safetensors")
    b = load_file(tmp_path / "tampered/final/model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert logs["clean"].loss.iloc[:2].tolist() == logs["tampered"].loss.iloc[:2].tolist()  # before the resume
    assert logs["clean"].loss.iloc[2] != pytest.approx(logs["tampered"].loss.iloc[2])  # the first resumed step


def test_each_stage_trains_against_its_own_teacher(world, rewarded, tmp_path, monkeypatch):
    import shutil

    root, questions = world
    _, path, _ = rewarded
    shutil.copytree(root / "teacher", tmp_path / "teacher_r0.00")
    stages = [training.Stage(str(root / "teacher"), str(path), steps=1, ratio=0.1, name="r0.10"),
              training.Stage(str(tmp_path / "teacher_r0.00"), str(path), steps=1, ratio=0.0, name="r0.00")]
    loaded, teachers_at_step = [], []
    real_step = training.step_loss
    monkeypatch.setattr(training, "load_checkpoint", lambda d: loaded.append(str(d)) or load_checkpoint(d))

    def step(student, teacher, *args, **kwargs):
        teachers_at_step.append(teacher.name_or_path)
        return real_step(student, teacher, *args, **kwargs)

    monkeypatch.setattr(training, "step_loss", step)
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, save_every=10, seed=3)
    log = training.train(str(root / "student"), stages, questions, cfg, str(tmp_path / "out"), progress=False)
    assert loaded == [str(root / "student"), str(root / "teacher"), str(tmp_path / "teacher_r0.00")]
    assert teachers_at_step == [str(root / "teacher"), str(tmp_path / "teacher_r0.00")]
    assert list(log.teacher) == ["r0.10", "r0.00"] and list(log.ratio) == [0.1, 0.0]


def test_data_order_covers_each_epoch_without_repeats():
    n_rows, batch = 10, 3  # 3 steps per epoch, the last row of each epoch's permutation left out
    for epoch in range(3):
        steps = [training.batch_order(n_rows, batch, seed=7, stage=1, step=epoch * 3 + k) for k in range(3)]
        seen = np.concatenate(steps)
        assert len(seen) == 9 and len(set(seen.tolist())) == 9 and set(seen.tolist()) <= set(range(n_rows))
    first = np.concatenate([training.batch_order(n_rows, batch, 7, 1, k) for k in range(3)])
    second = np.concatenate([training.batch_order(n_rows, batch, 7, 1, k) for k in range(3, 6)])
    assert first.tolist() != second.tolist(), "each epoch is a new permutation"
    assert training.batch_order(n_rows, batch, 7, 1, 4).tolist() == training.batch_order(n_rows, batch, 7, 1, 4).tolist()


def test_chunked_two_phase_backward_equals_autograd_of_the_full_forward_mean(world, rewarded):
    """step_loss (chunks of 2 positions, hidden states back-propagated once) against autograd of
    the mean of ℓ_t over a direct full forward; rows of unequal length, KL ≠ 0, distinct advantages."""
    from masters.forward import build_batch_from_rows

    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    lengths = rows.token_ids.map(len)
    picked = [lengths.idxmax(), lengths.idxmin(), *rows.index[(lengths != lengths.max()) & (lengths != lengths.min())][:1]]
    batch_rows = rows.loc[picked].copy()
    assert len(set(batch_rows.token_ids.map(len))) >= 2, "rows of unequal length"
    batch_rows["ref_logprobs"] = [list(np.asarray(r) - 0.3 * (i + 1)) for i, r in enumerate(batch_rows.ref_logprobs)]
    batch_rows["advantage"] = [1.0, -0.5, 2.0][: len(batch_rows)]
    cfg = training.TrainConfig(chunk_size=2, weights=LossWeights(beta=0.1, lam=0.7))
    vocab = len(s_proc.tokenizer)

    student.zero_grad(set_to_none=True)
    terms = training.step_loss(student, teacher, s_proc, t_proc, batch_rows, cfg, vocab)
    chunked = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    student.zero_grad(set_to_none=True)
    batch = build_batch_from_rows(s_proc, batch_rows)
    s_logits = student(**batch.inputs).logits[batch.predicts_response][:, :vocab].double()
    with torch.no_grad():
        t_batch = build_batch_from_rows(t_proc, batch_rows)
        t_logits = teacher(**t_batch.inputs).logits[t_batch.predicts_response][:, :vocab].double()
    logp = torch.log_softmax(s_logits, -1)
    logp_tok = logp.gather(1, batch.targets[:, None]).squeeze(1)
    p, q = torch.softmax(t_logits, -1), logp.exp()
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q.log() - m.log())).sum(-1)
    ref = torch.cat([torch.tensor(r, dtype=torch.float64) for r in batch_rows.ref_logprobs])
    adv = torch.cat([torch.full((n,), a, dtype=torch.float64) for a, n in zip(batch_rows.advantage, batch.lengths)])
    kl = torch.exp(ref - logp_tok) - (ref - logp_tok) - 1
    assert kl.min() > 1e-3
    loss = (-(torch.exp(logp_tok - logp_tok.detach()) * adv - 0.1 * kl) + 0.7 * jsd).mean()
    loss.backward()
    assert terms["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert terms["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    direct = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert set(direct) == set(chunked)
    for name, grad in direct.items():
        torch.testing.assert_close(chunked[name], grad.float(), rtol=1e-4, atol=1e-6, msg=name)
    # one family (train() passes the student's processor for both): the shared batch, same step
    assert t_proc is not s_proc
    student.zero_grad(set_to_none=True)
    assert training.step_loss(student, teacher, s_proc, s_proc, batch_rows, cfg, vocab) == terms
    for name, param in student.named_parameters():
        if param.grad is not None:
            assert torch.equal(param.grad, chunked[name]), name
    student.zero_grad(set_to_none=True)


def test_a_resumed_generation_generates_only_the_missing_batches(world, tmp_path, monkeypatch):
    """Generation resume that provably resumes: a part left by an interrupted run is used as it is
    (tampered here, and the tampering shows), and only the missing batches are generated."""
    root, questions = world
    full = _generate(root, questions, tmp_path / "a.parquet", "teacher")
    parts = _interrupted_generation(root, questions, tmp_path / "b.parquet", monkeypatch)
    first = pd.read_parquet(parts / "part-000000.parquet")  # batch 0: 4 questions x 3 responses
    first["text"] = "left by the interrupted run"
    first.to_parquet(parts / "part-000000.parquet", index=False)
    calls = []
    real = generation.HFBackend.generate
    monkeypatch.setattr(generation.HFBackend, "generate",
                        lambda self, chunk, *a: calls.append(list(chunk["id"])) or real(self, chunk, *a))
    resumed = _generate(root, questions, tmp_path / "b.parquet", "teacher")
    assert calls == [list(questions["id"].iloc[s:s + 4]) for s in range(4, len(questions), 4)]
    assert (resumed.text.iloc[:12] == "left by the interrupted run").all()
    pd.testing.assert_frame_equal(full.iloc[12:], resumed.iloc[12:])


def test_greedy_generation_rescored_through_the_training_forward(world, monkeypatch):
    """One greedy generation (left-padded, with the KV cache) re-scored through build_batch →
    response hidden states → chunked logits (right-padded, no cache, chunks of 3): the same
    log-probabilities at the generated tokens, and each generated token is the re-scored argmax."""
    from masters.forward import build_batch_from_rows, chunked_logits, response_hidden_states

    root, questions = world
    backend = generation.HFBackend(root / "student")
    captured = []
    real = backend.model.generate

    def generate(**kwargs):
        out = real(**kwargs, output_logits=True, return_dict_in_generate=True)
        captured.append(torch.stack(out.logits, dim=1))  # [B, steps, V]: the generation's own scores
        return out.sequences

    monkeypatch.setattr(backend.model, "generate", generate)
    chunk = questions.iloc[:4]
    params = generation.SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=7)
    completions = [group[0] for group in backend.generate(chunk, params, seed=0)]
    own = torch.log_softmax(captured[0].float(), dim=-1)
    rows = chunk.assign(token_ids=[c.token_ids for c in completions])
    batch = build_batch_from_rows(backend.processor, rows)
    with torch.no_grad():
        hidden = response_hidden_states(backend.model, batch)
        logp = torch.cat([torch.log_softmax(logits, -1) for _, logits in chunked_logits(backend.model, hidden, 3)])
    assert logp.shape[0] == sum(len(c.token_ids) for c in completions) > len(completions)
    start, vocab = 0, len(backend.processor.tokenizer)
    for i, c in enumerate(completions):
        ids = torch.tensor(c.token_ids)
        steps = torch.arange(len(ids))
        rescored = logp[start:start + len(ids)]
        torch.testing.assert_close(rescored[steps, ids], own[i, steps, ids], atol=1e-4, rtol=1e-4)
        assert rescored[:, :vocab].argmax(-1).tolist() == c.token_ids  # greedy: the argmax over real ids
        start += len(ids)


@pytest.mark.parametrize("change", [{"max_new_tokens": 4}, {"temperature": 0.7}, {"seed": 6}, {"n": 2},
                                    "batch_size", "questions", "unstamped"])
def test_parts_of_other_settings_are_discarded_not_reused(world, tmp_path, monkeypatch, change):
    """Regression (issue: one source of truth): parts were resumed by batch index only, so a rerun
    after a change of sampling or batch size silently reused stale parts."""
    root, questions = world
    out = tmp_path / "b.parquet"
    parts = _interrupted_generation(root, questions, out, monkeypatch)
    first = pd.read_parquet(parts / "part-000000.parquet")
    first["text"] = "stale"
    first.to_parquet(parts / "part-000000.parquet", index=False)
    sampling, rerun_questions, batch_size = (change if isinstance(change, dict) else {}), questions, 4
    if change == "questions":
        rerun_questions = questions.iloc[::-1].reset_index(drop=True)
    if change == "unstamped":  # parts written before fingerprints existed
        (parts / "fingerprint.json").unlink()
    if change == "batch_size":
        batch_size = 3
    backend = generation.HFBackend(root / "teacher")
    params = generation.SamplingParams(**{"n": 3, "max_new_tokens": 6, "seed": 5, **sampling})
    got = generation.generate_responses(backend, rerun_questions, params, out, source="teacher", model_name="teacher",
                                        ratio=0.0, batch_size=batch_size, progress=False)
    fresh = generation.generate_responses(backend, rerun_questions, params, tmp_path / "fresh.parquet",
                                          source="teacher", model_name="teacher", ratio=0.0, batch_size=batch_size,
                                          progress=False)
    assert "stale" not in set(got.text)
    pd.testing.assert_frame_equal(got, fresh)


def test_parts_of_a_retrained_model_are_discarded(world, tmp_path, monkeypatch):
    import os
    import shutil

    root, questions = world
    shutil.copytree(root / "teacher", tmp_path / "teacher")
    out = tmp_path / "b.parquet"
    parts = _interrupted_generation(tmp_path, questions, out, monkeypatch)
    first = pd.read_parquet(parts / "part-000000.parquet")
    first["text"] = "stale"
    first.to_parquet(parts / "part-000000.parquet", index=False)
    weights = tmp_path / "teacher/model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten weights
    assert "stale" not in set(_generate(tmp_path, questions, out, "teacher").text)


def test_without_the_jsd_term_the_teacher_is_not_run(world, rewarded, monkeypatch):
    """λ = 0: no teacher forward, a logged JSD of 0, and the loss of the other terms alone; the
    stored float32 reference log-probs stay float32 (found by mutation testing)."""
    from masters import forward
    from masters.losses import token_losses

    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    batch = rows.iloc[:3].copy()
    batch["advantage"] = [1.0, -1.0, 0.5]
    calls, dtypes = [], []
    real_hidden = training.sequence_hidden_states
    monkeypatch.setattr(training, "sequence_hidden_states", lambda m, b: calls.append(m) or real_hidden(m, b))
    monkeypatch.setattr(training, "token_losses", lambda lp, ref, *a: dtypes.append(ref.dtype) or token_losses(lp, ref, *a))
    vocab = len(s_proc.tokenizer)
    off = training.step_loss(student, teacher, s_proc, t_proc, batch,
                             training.TrainConfig(chunk_size=4, weights=LossWeights(beta=0.1, lam=0.0)), vocab)
    assert calls == [student] and off["jsd"] == 0.0 and set(dtypes) == {torch.float32}
    student.zero_grad()
    on = training.step_loss(student, teacher, s_proc, t_proc, batch,
                            training.TrainConfig(chunk_size=4, weights=LossWeights(beta=0.1, lam=0.5)), vocab)
    student.zero_grad()
    assert calls[1:] == [student, teacher] and on["jsd"] > 0
    assert on["loss"] == pytest.approx(off["loss"] + 0.5 * on["jsd"], rel=1e-5)
    short = batch.assign(ref_logprobs=[r[:-1] for r in batch.ref_logprobs])
    n = int(batch.token_ids.map(len).sum())
    with pytest.raises(ValueError, match=f"ref_logprobs hold {n - 3} values for {n} response tokens"):
        training.step_loss(student, teacher, s_proc, t_proc, short,
                           training.TrainConfig(weights=LossWeights(lam=0.0)), vocab)
    assert forward.sequence_hidden_states is real_hidden


def test_a_stale_temporary_state_from_a_killed_save_is_replaced(world, rewarded, tmp_path):
    _train(world, rewarded, tmp_path / "run", max_steps=2)  # state saved at step 2
    stale = tmp_path / "run.partial/resume.tmp"
    stale.mkdir()
    (stale / "junk").write_text("a save killed half-way")
    log = _train(world, rewarded, tmp_path / "run")
    assert list(log.step) == list(range(1, 7)) and not stale.exists()


class _NotATensor:
    """Any object a pickle could carry: a resume state must never unpickle it."""


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_a_resume_state_is_loaded_without_unpickling_objects(world, rewarded, tmp_path, name):
    import pickle

    _train(world, rewarded, tmp_path / "run", max_steps=2)  # state saved at step 2
    torch.save({"state": _NotATensor()}, tmp_path / "run.partial/resume" / name)
    with pytest.raises(pickle.UnpicklingError):
        _train(world, rewarded, tmp_path / "run")


def test_curve_checkpoints_and_the_learning_curve(world, rewarded, tmp_path, monkeypatch):
    """curve_every = 2 keeps pi_ref (step 0) and every 2nd step, across stages and a resume; the
    curve scores each of them (lm-eval mocked here: tests/test_tables.py runs it) and the figure
    plots the mean over benchmarks per step."""
    import pandas as pd

    from masters import curves, figures
    from masters.evaluation import Benchmark

    _train(world, rewarded, tmp_path / "run", max_steps=3, curve_every=2)  # killed after step 3, resumed
    _train(world, rewarded, tmp_path / "run", curve_every=2)
    steps = curves.step_checkpoints(tmp_path / "run")
    assert [s for s, _ in steps] == [0, 2, 4, 6]
    first, last = (load_file(steps[i][1] / "model.safetensors") for i in (0, -1))
    student, final = (load_file(p / "model.safetensors") for p in (world[0] / "student", tmp_path / "run/final"))
    assert all(torch.equal(first[k], student[k]) for k in student) and all(torch.equal(last[k], final[k]) for k in final)
    seen = []

    def evaluate(checkpoint, benchmarks, batch_size, limit, trust_remote_code, device, dtype):
        assert (device, dtype) == ("cpu", "float32")
        seen.append((Path(checkpoint).name, limit))
        step = int(Path(checkpoint).name[4:])
        return {"accuracy": {b.name: 10.0 * step + i for i, b in enumerate(benchmarks)},
                "n": {b.name: limit for b in benchmarks}}

    monkeypatch.setattr(curves, "evaluate", evaluate)
    curve = curves.learning_curve(tmp_path / "run", [Benchmark("a", "ta"), Benchmark("b", "tb")], limit=7)
    assert seen == [("step0", 7), ("step2", 7), ("step4", 7), ("step6", 7)]
    assert curve.values.tolist()[:3] == [[0, "a", 0.0, 7], [0, "b", 1.0, 7], [2, "a", 20.0, 7]]
    curve.to_csv(tmp_path / "curve.csv", index=False)
    figures.fig_curves({"limit": 7, "runs": [{"label": "S x", "curve": str(tmp_path / "curve.csv")}]}, tmp_path / "fig")
    assert pd.read_csv(tmp_path / "fig.csv")["accuracy"].tolist() == [0.5, 20.5, 40.5, 60.5]
    with pytest.raises(FileNotFoundError, match="no step checkpoints"):
        curves.step_checkpoints(tmp_path / "fig")


def test_a_state_caught_mid_replacement_is_resumed_from_the_newest_complete_state(world, rewarded, tmp_path):
    """Killed between setting the old state aside and renaming the new one into place, the run
    resumes from the complete new state in resume.tmp (here marked: the old one says step 2)."""
    import shutil

    _train(world, rewarded, tmp_path / "run", max_steps=5)  # state saved at step 4
    resume = tmp_path / "run.partial/resume"
    resume.rename(resume.with_name("resume.old"))  # the instant between the two renames
    shutil.copytree(resume.with_name("resume.old"), resume.with_name("resume.tmp"))
    stale = resume.with_name("resume.old") / "trainer_state.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "step": 2}))
    assert training.complete_state(resume) is None  # nothing at resume until it is settled
    log = _train(world, rewarded, tmp_path / "run", max_steps=1)
    assert list(log.step)[-1] == 5  # resumed at step 4 (the new state), ran one step
    assert not resume.with_name("resume.old").exists() and not resume.with_name("resume.tmp").exists()


def test_a_kill_while_the_log_is_written_leaves_the_previous_log_whole(world, rewarded, tmp_path, monkeypatch):
    """The training log is replaced whole: killed half-way through writing it (here: the write
    raises after a partial line), the resume reads the log of the last saved state. (Written in
    place, an empty train_log.csv made the SIGKILL test's resume fail: pandas' EmptyDataError.)"""
    import pandas as pd

    _train(world, rewarded, tmp_path / "run", max_steps=2)  # log and state at step 2
    real = pd.DataFrame.to_csv

    def torn(frame, path, *args, **kwargs):
        open(path, "w").write("step,lo")
        raise KeyboardInterrupt("killed while writing the log")

    monkeypatch.setattr(pd.DataFrame, "to_csv", torn)
    with pytest.raises(KeyboardInterrupt):
        _train(world, rewarded, tmp_path / "run", max_steps=3)  # writes the log at step 4
    assert pd.read_csv(tmp_path / "run.partial/train_log.csv").step.tolist() == [1, 2]
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    log = _train(world, rewarded, tmp_path / "run")
    assert list(log.step) == list(range(1, 7))


def test_an_interrupted_save_leaves_the_set_aside_state_or_half_deleted_leftovers(world, rewarded, tmp_path):
    """A new state killed while being written (no trainer_state.json yet) after the old one was
    set aside: the old one comes back. A half-deleted set-aside state beside a complete one is
    never read: it is deleted."""
    _train(world, rewarded, tmp_path / "run", max_steps=5)  # state saved at step 4
    resume = tmp_path / "run.partial/resume"
    resume.rename(resume.with_name("resume.old"))
    resume.with_name("resume.tmp").mkdir()
    (resume.with_name("resume.tmp") / "model.safetensors").write_text("half written")
    log = _train(world, rewarded, tmp_path / "run", max_steps=1)
    assert list(log.step)[-1] == 5
    half = resume.with_name("resume.old")
    half.mkdir()
    (half / "trainer_state.json").write_text(json.dumps({"stage": 0, "step": 1, "fingerprint": "x"}))  # its weights gone
    log = _train(world, rewarded, tmp_path / "run", max_steps=1)
    assert list(log.step)[-1] == 5 and not half.exists()  # from step 4 again (read, it would say step 1)


def test_a_run_resumed_from_tmp_after_its_last_stage_leaves_no_state_behind(world, rewarded, tmp_path, monkeypatch):
    """Killed after the last stage's state was written (here: the final save fails) and caught
    between remove and rename, the rerun writes the final checkpoint and no resume state in it."""
    real = training.save_checkpoint

    def failing(model, processor, out):
        if Path(out).name == "final":
            raise KeyboardInterrupt("killed before the final checkpoint")
        return real(model, processor, out)

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", failing)
        with pytest.raises(KeyboardInterrupt):
            _train(world, rewarded, tmp_path / "run")
    resume = tmp_path / "run.partial/resume"
    resume.rename(resume.with_name("resume.tmp"))
    log = _train(world, rewarded, tmp_path / "run")
    assert list(log.step) == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["final", "stage0", "stage1", "train_log.csv"]


def test_llava_kd_terms_in_the_chunked_step_equal_autograd_of_a_direct_float64_forward(world, rewarded):
    """LLaVA-KD's terms inside the two-phase chunked step (Table 5f): L_reg, forward-KL MDist at the
    response and at the visual-token positions, RDist on the visual tokens' final states, with the
    GRPO + KL terms, against autograd of the whole loss
    written directly in float64 from full logits; the logged terms too."""
    from masters.forward import build_batch_from_rows

    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    batch_rows = rows.iloc[:3].copy()
    batch_rows["ref_logprobs"] = [list(np.asarray(r) - 0.2 * (i + 1)) for i, r in enumerate(batch_rows.ref_logprobs)]
    batch_rows["advantage"] = [1.0, -0.5, 2.0]
    weights = LossWeights(beta=0.1, lam=0.7, divergence="kl", visual_kl=0.8, rdist=0.5, nll=0.3)
    cfg = training.TrainConfig(chunk_size=2, weights=weights)
    vocab = len(s_proc.tokenizer)

    student.zero_grad(set_to_none=True)
    terms = training.step_loss(student, teacher, s_proc, t_proc, batch_rows, cfg, vocab)
    chunked = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    student.zero_grad(set_to_none=True)
    batch, t_batch = build_batch_from_rows(s_proc, batch_rows), build_batch_from_rows(t_proc, batch_rows)
    states = student.model(**batch.inputs)[0]
    with torch.no_grad():
        t_states = teacher.model(**t_batch.inputs)[0]
    counts = batch.visual.sum(1).tolist()
    assert min(counts) > 0 and counts == t_batch.visual.sum(1).tolist()
    from masters.forward import visual_token_counts

    assert visual_token_counts(batch) == counts and len(counts) == len(batch_rows)  # one count per row

    def logits(model, h):
        return model.lm_head(h)[:, :vocab].double()

    def forward_kl(t_logits, s_logits):
        lp, lq = torch.log_softmax(t_logits, -1), torch.log_softmax(s_logits, -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    s_logits = logits(student, states[batch.predicts_response])
    t_logits = logits(teacher, t_states[t_batch.predicts_response])
    logp_tok = torch.log_softmax(s_logits, -1).gather(1, batch.targets[:, None]).squeeze(1)
    ref = torch.cat([torch.tensor(r, dtype=torch.float64) for r in batch_rows.ref_logprobs])
    adv = torch.cat([torch.full((n,), a, dtype=torch.float64) for a, n in zip(batch_rows.advantage, batch.lengths)])
    kl = torch.exp(ref - logp_tok) - (ref - logp_tok) - 1
    per_token = -(torch.exp(logp_tok - logp_tok.detach()) * adv - 0.1 * kl) + 0.7 * forward_kl(t_logits, s_logits) \
        - 0.3 * logp_tok
    s_vis, t_vis = states[batch.visual].double(), t_states[t_batch.visual].double()
    vis = forward_kl(logits(teacher, t_vis.float()), logits(student, states[batch.visual])).mean()
    rels = []
    for a, b in zip(torch.split(s_vis, counts), torch.split(t_vis, counts)):
        r_s, r_t = (a @ a.T).flatten(), (b @ b.T).flatten()
        rels.append(1 - (r_s * r_t).sum() / (r_s.norm() * r_t.norm()))
    rel = torch.stack(rels).mean()
    loss = per_token.mean() + 0.8 * vis + 0.5 * rel
    loss.backward()
    assert terms["vis"] == pytest.approx(vis.item(), rel=1e-4) and terms["rel"] == pytest.approx(rel.item(), rel=1e-4)
    assert terms["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert vis.item() > 1e-3 and rel.item() > 1e-6
    direct = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert set(direct) == set(chunked)
    for name, grad in direct.items():
        torch.testing.assert_close(chunked[name], grad.float(), rtol=1e-4, atol=1e-6, msg=name)
    student.zero_grad(set_to_none=True)


def test_a_frozen_part_does_not_train_and_the_rest_does(world, rewarded, tmp_path):
    """training.frozen (LLaVA-KD's DFT freezes the vision encoder): after training, the frozen part's
    weights are the initial ones byte for byte, every other part moved; the log has the visual terms."""
    from masters.llava_kd import part_of

    root, _ = world
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, seed=3, frozen=("vision",),
                               weights=LossWeights(kind="jsd", divergence="kl", visual_kl=1.0, rdist=0.5, nll=1.0))
    log = _run(world, _stages(world, rewarded, ratios=(0.0,), steps=2), cfg, tmp_path / "dft")
    before = dict(load_checkpoint(str(root / "student"))[0].named_parameters())
    after = dict(load_checkpoint(str(tmp_path / "dft/final"))[0].named_parameters())
    moved = {part_of(n) for n in before if not torch.equal(before[n], after[n])}
    assert moved == {"projector", "llm"}
    assert all(torch.equal(before[n], after[n]) for n in before if part_of(n) == "vision")
    assert log[["vis", "rel"]].notna().all().all() and (log["vis"] > 0).all()
    plain = _run(world, _stages(world, rewarded, ratios=(0.0,), steps=1), training.TrainConfig(batch_size=4),
                 tmp_path / "plain")
    assert plain[["vis", "rel"]].isna().all().all()  # no visual term: logged as missing


def test_stages_with_their_own_settings_run_llava_kds_recipe_and_resume_into_them(world, rewarded, tmp_path):
    """Per-stage settings (LLaVA-KD's DPT -> SFT -> DFT as stages of one run): DPT trains only the
    projector, SFT (L_reg alone) and DFT the projector and the LLM; a run stopped in the SFT stage
    resumes into that stage's settings and ends bit-identical to the uninterrupted run."""
    from masters.llava_kd import part_of

    root, _ = world
    cfg = training.TrainConfig(lr=1e-3, batch_size=4, chunk_size=5, save_every=1, seed=3, frozen=("vision",),
                               weights=LossWeights(kind="jsd", divergence="kl", visual_kl=1.0, rdist=0.5, nll=1.0))
    dpt, sft, dft = _stages(world, rewarded, ratios=(0.0, 0.0, 0.0), steps=2)
    stages = [replace(dpt, settings=(("frozen", ("vision", "llm")),)),
              replace(sft, settings=(("lam", 0.0), ("rdist", 0.0), ("visual_kl", 0.0))), dft]
    log = _run(world, stages, cfg, tmp_path / "recipe")

    def parts_moved(a, b):
        before, after = (dict(load_checkpoint(str(p))[0].named_parameters()) for p in (a, b))
        return {part_of(n) for n in before if not torch.equal(before[n], after[n])}

    assert parts_moved(root / "student", tmp_path / "recipe/stage0") == {"projector"}  # DPT
    assert parts_moved(tmp_path / "recipe/stage0", tmp_path / "recipe/stage1") == {"projector", "llm"}  # SFT
    assert parts_moved(tmp_path / "recipe/stage1", tmp_path / "recipe/stage2") == {"projector", "llm"}  # DFT
    by_stage = log.groupby("stage")
    assert (by_stage["vis"].min()[[0, 2]] > 0).all() and (by_stage["jsd"].min()[[0, 2]] > 0).all()
    sft_rows = log[log.stage == 1]  # L_reg alone: the distillation terms are not even computed
    assert (sft_rows["jsd"] == 0).all() and sft_rows[["vis", "rel"]].isna().all().all()
    off = replace(sft, settings=(("lam", 0.0), ("nll", 0.0), ("rdist", 0.0), ("visual_kl", 0.0)))
    with pytest.raises(ValueError, match="trains nothing"):  # a stage with every term off: refused up front
        training.stage_config(cfg, off)
    _run(world, stages, cfg, tmp_path / "stopped", max_steps=3)  # stops in the SFT stage
    _run(world, stages, cfg, tmp_path / "stopped")
    straight, resumed = (load_file(tmp_path / d / "final/model.safetensors") for d in ("recipe", "stopped"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    with pytest.raises(ValueError, match=r"unknown settings \['lr'\]"):
        training.stage_config(cfg, replace(dft, settings=(("lr", 1.0),)))
    assert training.stage_config(cfg, dft) is cfg


def test_each_visual_term_is_computed_only_when_it_weighs(world, rewarded, tmp_path):
    """LLaVA-KD's two visual terms are separate: visual MDist alone logs `vis` and a zero `rel`, RDist
    alone `rel` and a zero `vis` (a term with weight 0 is not computed; with both off the visual
    pass does not run at all and both cells are missing)."""
    stages = _stages(world, rewarded, ratios=(0.0,), steps=1)
    for weights, present, missing in (({"visual_kl": 1.0}, "vis", "rel"), ({"rdist": 0.5}, "rel", "vis")):
        cfg = training.TrainConfig(batch_size=4, chunk_size=5, weights=LossWeights(kind="jsd", **weights))
        log = _run(world, stages, cfg, tmp_path / present)
        assert (log[present] > 0).all() and (log[missing] == 0).all(), weights


def test_a_teacher_that_encodes_prompts_otherwise_is_scored_on_its_own_batch(rewarded):
    """The reward's teacher pass (D per response) on a batch its own processor builds when its chat
    template differs from the student's: D then differs from the shared-batch D; the student's
    reference log-probs do not."""
    import copy

    from masters.prompts import same_encoding

    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    part = rows.iloc[:4].copy()
    other = copy.deepcopy(t_proc)
    other.chat_template = t_proc.chat_template.replace("You are a helpful assistant.", "You are a teacher.")
    assert not same_encoding(s_proc, other)
    shared_d, shared_ref = rewards.score_responses(teacher, student, t_proc, s_proc, part, batch_size=3)
    own_d, own_ref = rewards.score_responses(teacher, student, other, s_proc, part, batch_size=3)
    assert own_ref == shared_ref and own_d != pytest.approx(shared_d, abs=1e-6)
    assert shared_d == pytest.approx(part.divergence.tolist(), abs=1e-5)


def test_a_saved_state_leaves_one_copy_on_disk_and_replaces_a_stale_partial_save(tmp_path):
    """save_state twice: only `resume` is left (the state set aside is deleted once the new one is
    in place: a 7B student's state with its optimizer is tens of GB, two copies would double the
    disk it needs); a stale `resume.tmp` (an earlier save killed half-way) is replaced, not an error."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    out = tmp_path / "run/resume"
    training.save_state(model, optimizer, {"step": 1}, out)
    (tmp_path / "run/resume.tmp").mkdir()
    (tmp_path / "run/resume.tmp/model.safetensors").write_text("half written")
    training.save_state(model, optimizer, {"step": 2}, out)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["resume"]
    assert json.loads((out / "trainer_state.json").read_text()) == {"step": 2}


@pytest.mark.parametrize("skew", [0.1, 0.3])
def test_the_distillation_term_is_the_configured_divergence_with_its_skew(world, rewarded, skew):
    """With `divergence: srkl` (DistiLLM's skew reverse KL, Table 5f) the step's distillation term
    is that divergence at the configured skew α, computed from full logits (not the default α)."""
    from masters.divergences import token_divergence
    from masters.forward import build_batch_from_rows

    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    batch_rows = rows.iloc[:3].copy()
    batch_rows["advantage"] = [1.0, -0.5, 2.0]
    vocab = len(s_proc.tokenizer)
    batch, t_batch = build_batch_from_rows(s_proc, batch_rows), build_batch_from_rows(t_proc, batch_rows)
    with torch.no_grad():
        s_logits = student.lm_head(student.model(**batch.inputs)[0][batch.predicts_response])
        t_logits = teacher.lm_head(teacher.model(**t_batch.inputs)[0][t_batch.predicts_response])
    direct = token_divergence("srkl", t_logits.double(), s_logits.double(), skew, vocab_size=vocab).mean()
    cfg = training.TrainConfig(chunk_size=2, weights=LossWeights(divergence="srkl", skew=skew))
    terms = training.step_loss(student, teacher, s_proc, t_proc, batch_rows, cfg, vocab)
    student.zero_grad(set_to_none=True)
    assert terms["jsd"] == pytest.approx(direct.item(), rel=1e-4)
    other = token_divergence("srkl", t_logits.double(), s_logits.double(), 0.2, vocab_size=vocab).mean()
    assert abs(other.item() - direct.item()) > 1e-3 * direct.item()  # α changes the term: the check has teeth


def test_without_a_response_distillation_term_the_teacher_scores_only_the_visual_tokens(world, rewarded):
    """λ = 0 with a visual term on (LLaVA-KD's projector pre-training, DPT): the teacher runs for the
    visual tokens only, its response logits are never computed, and the log's distillation column
    is 0, not a divergence that weighs nothing."""
    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    batch_rows = rows.iloc[:3].copy()
    batch_rows["advantage"] = [1.0, -0.5, 2.0]
    cfg = training.TrainConfig(chunk_size=2, weights=LossWeights(lam=0.0, visual_kl=0.5))
    heads = []
    hook = teacher.lm_head.register_forward_hook(lambda module, args, out: heads.append(args[0].shape[0]))
    try:
        terms = training.step_loss(student, teacher, s_proc, t_proc, batch_rows, cfg, len(s_proc.tokenizer))
    finally:
        hook.remove()
        student.zero_grad(set_to_none=True)
    assert terms["jsd"] == 0.0 and terms["vis"] > 0
    assert heads and all(n > 0 for n in heads)  # the teacher's head ran, on the visual tokens alone
    from masters.forward import build_batch_from_rows

    assert sum(heads) == int(build_batch_from_rows(t_proc, batch_rows).visual.sum())
