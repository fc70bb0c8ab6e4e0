"""DeepSpeed ZeRO-3 training (masters/zero.py) on the CPU: two processes with gloo follow the
single-process trainer's loss curve (same global batch) within 1e-4 over 10 steps, and the
consolidated checkpoint loads with the stock Auto classes; killed, a run resumes. The runs
partition every parameter and their processes' batches differ in response tokens, as at paper
scale. The chunked single-backward loss equals the two-phase one, gradients included, with
or without extra empty chunks (no DeepSpeed needed for that)."""

import re
import subprocess
import sys

import pandas as pd
import pytest
import torch

from masters import training
from masters.checkpoints import load_checkpoint
from masters.losses import LossWeights
from tests.conftest import REPO
from tests.test_pipeline import rewarded, world  # noqa: F401  (module fixtures)


@pytest.mark.parametrize("weights", [
    LossWeights(beta=0.1, lam=0.7),
    LossWeights(beta=0.1, lam=0.0),  # no JSD term: the teacher is not run
    # LLaVA-KD's visual terms (MDist at the visual tokens, RDist) beside the response terms, and alone
    LossWeights(beta=0.1, lam=0.7, divergence="kl", visual_kl=0.8, rdist=0.5, nll=0.3),
    LossWeights(beta=0.1, lam=0.0, visual_kl=0.5),
], ids=["masters", "no-jsd", "llava-kd", "visual-kl-only"])
def test_the_single_backward_loss_equals_the_two_phase_one(world, rewarded, weights):  # noqa: F811
    rows, _, (teacher, student, t_proc, s_proc) = rewarded
    root, questions = world
    batch = training.load_stage_rows(training.Stage("t", str(rewarded[1]), 1), questions, ("teacher", "student"))
    batch = batch.iloc[:6]
    cfg = training.TrainConfig(chunk_size=3, weights=weights)
    vocab = len(s_proc.tokenizer)
    student.zero_grad()
    teacher.zero_grad(set_to_none=True)
    terms = training.step_loss(student, teacher, s_proc, t_proc, batch, cfg, vocab)
    two_phase = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    # the teacher (its parameters still trainable here) gets no gradient: its head once did, V x H a step
    assert not [n for n, p in teacher.named_parameters() if p.grad is not None]
    student.zero_grad()
    tokens = sum(len(t) for t in batch.token_ids)
    seen = []
    loss, sums = training.step_loss_checkpointed(student, teacher, s_proc, t_proc, batch, cfg, vocab,
                                                 denominator=float(tokens),
                                                 visual_denominators=lambda k, r: seen.append((k, r)) or (k, r))
    loss.backward()
    assert loss.item() == pytest.approx(terms["loss"], abs=1e-6)
    assert (sums[1:4] / tokens).tolist() == pytest.approx([terms[k] for k in ("pg", "kl", "jsd")], abs=1e-6)
    if weights.visual:
        (k, n_rows), = seen
        assert n_rows == len(batch) and k > n_rows
        assert [sums[4] / k, sums[5] / n_rows] == pytest.approx([terms["vis"], terms["rel"]], abs=1e-6)
        assert terms["vis"] > 0 if weights.visual_kl else terms["vis"] == 0
        response = float(sums[0] / tokens)
        assert terms["loss"] == pytest.approx(response + weights.visual_kl * terms["vis"] + weights.rdist * terms["rel"], abs=1e-6)
    else:
        assert not seen and sums[4] == sums[5] == 0 and float(sums[0] / tokens) == pytest.approx(terms["loss"], abs=1e-6)
    single = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert single.keys() == two_phase.keys() and len(single) > 10
    for name, grad in single.items():
        torch.testing.assert_close(grad, two_phase[name], rtol=1e-5, atol=1e-7, msg=name)
    student.zero_grad()


def test_deepspeed_config_entries_merge_over_the_generated_one():
    from masters.zero import ds_config

    base = ds_config(8, 2, 1.0, bf16=False)
    assert base["train_micro_batch_size_per_gpu"] == 4 and base["zero_optimization"]["stage"] == 3
    merged = ds_config(8, 2, 1.0, bf16=False, extra={"zero_optimization": {"offload_optimizer": {"device": "cpu"}},
                                                     "bf16": {"enabled": True}})
    assert merged["zero_optimization"] == {**base["zero_optimization"], "offload_optimizer": {"device": "cpu"}}
    assert merged["bf16"] == {"enabled": True} and base["bf16"] == {"enabled": False}
    for fixed in ({"train_batch_size": 4}, {"zero_optimization": {"stage": 2}}):
        with pytest.raises(ValueError, match=r"training\.deepspeed\.(train_batch_size|zero_optimization\.stage)"):
            ds_config(8, 2, 1.0, bf16=False, extra=fixed)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ds_config(8, 3, 1.0, bf16=False)


def test_every_process_runs_the_same_number_of_loss_chunks(world, rewarded):  # noqa: F811
    """Under ZeRO-3 each output-head call gathers its weight across the processes: a process with
    fewer response tokens runs empty chunks up to the most any process needs; the loss and the
    gradients are unchanged by them."""
    _, _, (teacher, student, t_proc, s_proc) = rewarded
    root, questions = world
    batch = training.load_stage_rows(training.Stage("t", str(rewarded[1]), 1), questions, ("teacher", "student")).iloc[:3]
    cfg = training.TrainConfig(chunk_size=4, weights=LossWeights(beta=0.1, lam=0.7))
    vocab, tokens = len(s_proc.tokenizer), float(sum(len(t) for t in batch.token_ids))
    calls = []
    hook = student.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    results = []
    for most in (lambda n: n, lambda n: n + 3):
        student.zero_grad()
        calls.clear()
        loss, sums = training.step_loss_checkpointed(student, teacher, s_proc, t_proc, batch, cfg, vocab, tokens,
                                                     n_chunks=most)
        loss.backward()
        results.append((loss.item(), sums, {n: p.grad.clone() for n, p in student.named_parameters()
                                            if p.grad is not None}, len(calls)))
    hook.remove()
    student.zero_grad()
    (a, a_sums, a_grads, a_calls), (b, b_sums, b_grads, b_calls) = results
    needed = -(-int(tokens) // cfg.chunk_size)
    assert a_calls == 2 * needed and b_calls == 2 * (needed + 3)  # forward + recompute in backward
    assert a == b and torch.equal(a_sums, b_sums) and a_grads.keys() == b_grads.keys()
    assert all(torch.equal(a_grads[k], b_grads[k]) for k in a_grads)


# Every parameter partitioned: DeepSpeed keeps parameters under 1e5 elements whole on every
# process, and at this size that is all of them, so nothing would be gathered in a step.
PARTITIONED = ["--deepspeed-config", '{"zero_optimization": {"stage3_param_persistence_threshold": 0}}']


def _uneven_responses(path, tmp_path):
    """The rewarded responses cut to 1..6 tokens (the fixture's are all 6 long)."""
    rows = pd.read_parquet(path)
    keep = [1 + i % 6 for i in range(len(rows))]
    rows["token_ids"] = [list(t)[:k] for t, k in zip(rows.token_ids, keep)]
    rows["ref_logprobs"] = [list(r)[:k] for r, k in zip(rows.ref_logprobs, keep)]
    rows.to_parquet(tmp_path / "uneven.parquet")
    return tmp_path / "uneven.parquet"


@pytest.mark.slow
@pytest.mark.parametrize("terms", [
    ["--loss", "masters"],
    # LLaVA-KD's with Masters (Table 5f): KL at the responses and the visual tokens, RDist, the vision encoder frozen
    ["--loss", "masters", "--divergence", "kl", "--visual-kl", "1.0", "--rdist", "0.5", "--frozen", "vision"],
], ids=["masters", "llava-kd-masters"])
def test_two_zero3_processes_follow_the_single_process_loss(world, rewarded, tmp_path, terms):  # noqa: F811
    pytest.importorskip("deepspeed", reason="deepspeed is in the test extra (scripts/setup.sh installs it)")
    root, questions = world
    _, path, _ = rewarded
    qfile = tmp_path / "questions.parquet"
    questions.to_parquet(qfile)
    path = _uneven_responses(path, tmp_path)
    args = ["--student", str(root / "student"), "--questions", str(qfile),
            "--stage", "T", str(root / "teacher"), str(path), "10", "0.0", *terms, "--lr", "0.001", "--batch-size", "4", "--chunk-size", "5", "--save-every", "5",
            "--seed", "3"]
    single = tmp_path / "single"
    run = subprocess.run([sys.executable, "-m", "masters.cli", "train", *args, "--out", str(single)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # in some step the two processes need different numbers of loss chunks (their rows differ in
    # response tokens), and each of their head calls gathers the head's weight (PARTITIONED)
    rows = training.load_stage_rows(training.Stage("T", str(path), 10), questions, ("teacher", "student"))
    steps = [rows.iloc[training.batch_order(len(rows), 4, 3, 0, step)].token_ids for step in range(10)]
    chunks = [[-(-sum(map(len, ids.iloc[r::2])) // 5) for r in (0, 1)] for ids in steps]
    assert any(a != b for a, b in chunks), chunks
    zero = tmp_path / "zero"
    run = subprocess.run([sys.executable, "-m", "masters.cli", "train", *args, "--backend", "deepspeed",
                          *PARTITIONED, "--processes", "2", "--out", str(zero)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    # student and teacher built partitioned (zero.Init): no process held a whole copy
    loaded = re.findall(r"loaded partitioned over 2 processes \(ZeRO-3 zero.Init\): ([\d,]+) of ([\d,]+) param", run.stdout)
    assert len(loaded) == 2, run.stdout[-3000:]
    assert all(0 < int(held.replace(",", "")) <= int(total.replace(",", "")) // 2 + 1000 for held, total in loaded), loaded
    a, b = pd.read_csv(single / "train_log.csv"), pd.read_csv(zero / "train_log.csv")
    assert list(a.step) == list(b.step) == list(range(1, 11))
    assert (a.loss - b.loss).abs().max() < 1e-4, pd.concat([a.loss, b.loss], axis=1)
    assert a.loss.iloc[0] != a.loss.iloc[-1]  # it trained
    if "--visual-kl" in terms:  # the visual terms were logged as the single process logs them
        assert (a[["vis", "rel"]] - b[["vis", "rel"]]).abs().max().max() < 1e-4 and (b.vis > 0).all() and (b.rel > 0).all()
    from transformers import AutoModelForImageTextToText

    ours = AutoModelForImageTextToText.from_pretrained(zero / "final")  # the stock class, safetensors
    theirs, _ = load_checkpoint(single / "final")
    for (name, p), (_, q) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4, msg=name)
    assert sorted(x.name for x in zero.iterdir()) == sorted(x.name for x in single.iterdir())


@pytest.mark.slow
def test_a_killed_zero3_run_resumes_and_ends_as_an_uninterrupted_one(world, rewarded, tmp_path):  # noqa: F811
    """Killed (SIGKILL) after it saved a state, a 2-process ZeRO-3 run resumes from DeepSpeed's
    own checkpoint at that step, runs only the remaining steps, and ends with the weights of a
    straight run."""
    import json
    import signal
    import time

    import psutil

    pytest.importorskip("deepspeed")
    root, questions = world
    _, path, _ = rewarded
    qfile = tmp_path / "questions.parquet"
    questions.to_parquet(qfile)
    args = [sys.executable, "-m", "masters.cli", "train", "--student", str(root / "student"), "--questions",
            str(qfile), "--stage", "T", str(root / "teacher"), str(_uneven_responses(path, tmp_path)), "12", "0.0",
            "--lr", "0.001", "--batch-size", "4", "--chunk-size", "5", "--save-every", "4", "--seed", "3",
            "--backend", "deepspeed", *PARTITIONED, "--processes", "2"]
    killed = tmp_path / "killed"
    state = killed.with_name("killed.partial") / "resume/trainer_state.json"
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    # every process of the run at once: torchrun starts each rank in a session of its own, so
    # killing the launcher's process group would leave the ranks training on
    tree = [proc_ for proc_ in psutil.Process(proc.pid).children(recursive=True)]
    for victim in [psutil.Process(proc.pid), *tree]:
        victim.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    saved = json.loads(state.read_text())["step"]
    assert saved in (4, 8) and not killed.exists(), "killed after a saved state, before the end"
    rerun = subprocess.run([*args, "--out", str(killed)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert f"resuming at stage 0, step {saved}" in rerun.stdout, rerun.stdout[-3000:]
    assert f"| {12 - saved}/{12 - saved} [" in rerun.stderr  # the progress bar: only the remaining steps ran
    straight = subprocess.run([*args, "--out", str(tmp_path / "straight")], cwd=REPO, capture_output=True,
                              text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = load_checkpoint(killed / "final")[0].state_dict(), load_checkpoint(tmp_path / "straight/final")[0].state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    log = pd.read_csv(killed / "train_log.csv")
    assert list(log.step) == list(range(1, 13))
    assert log.loss.tolist() == pytest.approx(pd.read_csv(tmp_path / "straight/train_log.csv").loss.tolist(), abs=1e-6)


def test_the_torch_backend_steps_as_step_loss_then_clip_and_adamw(world, rewarded):  # noqa: F811
    """TorchBackend.step = step_loss with the tokenizer's vocabulary (the student's head is padded
    wider) + gradient clipping + AdamW, on the device it was given."""
    import copy

    rows, path, (teacher, student, t_proc, s_proc) = rewarded
    root, questions = world
    batch = training.load_stage_rows(training.Stage("t", str(path), 1), questions, ("teacher", "student")).iloc[:4]
    cfg = training.TrainConfig(chunk_size=3, lr=0.01, grad_clip=0.05, weights=LossWeights(beta=0.1, lam=0.7))
    vocab = len(s_proc.tokenizer)
    assert student.get_output_embeddings().weight.shape[0] > vocab  # padded: the cut matters
    student.zero_grad(set_to_none=True)
    reference = copy.deepcopy(student)
    expected = training.step_loss(reference, teacher, s_proc, t_proc, batch, cfg, vocab)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip)
    torch.optim.AdamW(reference.parameters(), lr=cfg.lr, weight_decay=0.0).step()

    backend = training.TorchBackend("cpu")
    model = backend.prepare(copy.deepcopy(student), cfg)
    assert backend.step(teacher, s_proc, t_proc, batch, vocab, {}) == expected
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(got, want), name
    moved = training.TorchBackend("meta")  # a device the models are not on: both are moved there
    assert moved.teacher(copy.deepcopy(teacher)).device.type == "meta"
    assert moved.prepare(copy.deepcopy(student), cfg).device.type == "meta"


def test_a_teacher_that_encodes_prompts_otherwise_gets_its_own_batch(world, rewarded):  # noqa: F811
    """A teacher whose processor encodes prompts differently (here: another system prompt in its
    chat template) is run on a batch built by its own processor, not on the student's."""
    import copy

    from masters.forward import build_batch_from_rows, response_hidden_states
    from masters.prompts import same_encoding

    rows, path, (teacher, student, t_proc, s_proc) = rewarded
    root, questions = world
    batch = training.load_stage_rows(training.Stage("t", str(path), 1), questions, ("teacher", "student")).iloc[:3]
    other = copy.deepcopy(t_proc)
    other.chat_template = t_proc.chat_template.replace("You are a helpful assistant.", "You are a teacher.")
    assert other.chat_template != t_proc.chat_template and not same_encoding(s_proc, other)
    cfg = training.TrainConfig(weights=LossWeights(beta=0.1, lam=0.7))
    with torch.no_grad():
        own = response_hidden_states(teacher, build_batch_from_rows(other, batch))
        shared = response_hidden_states(teacher, build_batch_from_rows(s_proc, batch))
    assert not torch.equal(own, shared)
    for t in (other, s_proc):
        _, _, t_hidden, *_ = training._step_inputs(student, teacher, s_proc, t, batch, cfg, None)
        torch.testing.assert_close(t_hidden, own if t is other else shared, rtol=0, atol=0)
