"""The warm worker (masters/worker.py): jobs forked from it write the bytes a fresh process writes,
fail as a fresh process fails, and stop when their command is stopped; it is not used where it
must not be (SLURM jobs, a job whose import-time environment differs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masters import worker
from masters.checkpoints import save_checkpoint
from masters.world import models, vqa
from tests.conftest import TINY

MASTERS = [sys.executable, "-m", "masters.cli"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer, processor, items):
    """A tiny teacher and student and a question file."""
    root = tmp_path_factory.mktemp("worker")
    for name, seed in (("teacher", 1), ("student", 2)):
        model = models.build_model("qwen2_5_vl", models.ModelSize(**TINY, vocab_multiple=64), tokenizer, seed=seed)
        save_checkpoint(model, processor, root / name)
    vqa.write_parquet(items.groupby("task").head(2).to_dict("records"), root / "q.parquet")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A running worker: (its socket, a function returning its log so far)."""
    where = tmp_path_factory.mktemp("socket")
    process, path = worker.start(log=str(where / "worker.log"))
    deadline = time.time() + 180
    while not os.path.exists(path):
        assert process.poll() is None and time.time() < deadline, (where / "worker.log").read_text()
        time.sleep(0.1)
    yield path, lambda: (where / "worker.log").read_text()
    worker.stop(process, path)
    assert not os.path.exists(path), "the socket is removed"
    os.environ.pop(worker.ENV, None)


def _env(socket_path=None, **extra):
    """The environment of a job as Snakemake starts it (thread counts of its `threads`)."""
    env = {k: v for k, v in os.environ.items() if k != worker.ENV} | dict.fromkeys(worker.THREAD_ENV, "1")
    if socket_path:
        env[worker.ENV] = socket_path
    return {**env, **extra}


def _chain(root: Path, out: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """generate (teacher, student) -> judge -> score -> reward -> train, as the rules call them."""
    out.mkdir()
    q = ["--questions", str(root / "q.parquet")]
    steps = [
        ["generate", "--model", str(root / "teacher"), "--source", "teacher", "--ratio", "0", "--n", "2",
         "--max-new-tokens", "5", "--batch-size", "4", "--seed", "3", "--out", str(out / "t.parquet"), *q],
        ["generate", "--model", str(root / "student"), "--source", "student", "--ratio", "0", "--n", "2",
         "--max-new-tokens", "5", "--batch-size", "4", "--seed", "3", "--out", str(out / "s.parquet"), *q],
        ["judge", "--responses", str(out / "t.parquet"), "--kind", "rule", "--out", str(out / "tj.parquet"), *q],
        ["judge", "--responses", str(out / "s.parquet"), "--kind", "rule", "--out", str(out / "sj.parquet"), *q],
        ["score", "--responses", str(out / "t.parquet"), str(out / "s.parquet"), "--teacher", str(root / "teacher"),
         "--student", str(root / "student"), "--out", str(out / "scores.parquet"), *q],
        ["reward", "--responses", str(out / "tj.parquet"), str(out / "sj.parquet"), "--scores",
         str(out / "scores.parquet"), "--out", str(out / "r.parquet")],
        ["train", "--student", str(root / "student"), "--stage", "T", str(root / "teacher"), str(out / "r.parquet"),
         "6", "0.0", "--lr", "1e-3", "--batch-size", "4", "--save-every", "2", "--seed", "3", "--threads", "2",
         "--out", str(out / "trained"), *q],
    ]
    return [subprocess.run(MASTERS + step, env=env, capture_output=True, text=True) for step in steps]


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def direct(files, tmp_path_factory):
    """The chain run as fresh processes: (its directory, its runs)."""
    out = tmp_path_factory.mktemp("direct") / "out"
    runs = _chain(files, out, _env())
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    return out, runs


def test_jobs_in_the_worker_write_the_bytes_of_fresh_processes(files, server, direct, tmp_path):
    path, log = server
    before = len(log())
    forked = _chain(files, tmp_path / "forked", _env(path))
    for run in forked:
        assert run.returncode == 0, run.stderr[-3000:]
    new = log()[before:]
    assert new.count("masters worker: job ") == 2 * len(forked), "every job ran in the worker (started, exited)"
    assert "declined" not in new
    a, b = _tree(direct[0]), _tree(tmp_path / "forked")
    assert a.keys() == b.keys() and "trained/final/model.safetensors" in a
    assert [name for name in a if a[name] != b[name]] == []
    said = [r.stdout.splitlines()[-1].replace(str(direct[0]), "OUT") for r in direct[1]]  # (no timestamped lines)
    assert said == [r.stdout.splitlines()[-1].replace(str(tmp_path / "forked"), "OUT") for r in forked], "own stdout"


def test_a_failing_job_fails_with_its_message_and_status(files, server, tmp_path):
    path, log = server
    runs = [subprocess.run(MASTERS + ["evaluate", "--model", str(files / "student"), "--benchmarks", "[]"],
                           env=env, capture_output=True, text=True) for env in (_env(), _env(path))]
    assert [r.returncode for r in runs] == [1, 1]
    assert runs[0].stderr == runs[1].stderr and "give --out and/or --out-dir" in runs[1].stderr
    bad = subprocess.run(MASTERS + ["judge", "--responses", str(tmp_path / "missing.parquet"), "--kind", "rule",
                                    "--questions", str(files / "q.parquet"), "--out", str(tmp_path / "j.parquet")],
                         env=_env(path), capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.parquet" in bad.stderr and "Traceback" in bad.stderr
    assert log().count("exited 1") >= 2


@pytest.mark.parametrize("extra", [{"SLURM_JOB_ID": "7"}, {"HF_HUB_OFFLINE": "0"}, {"TOKENIZERS_PARALLELISM": "false"}])
def test_jobs_the_worker_must_not_run_run_in_their_own_process(files, server, tmp_path, extra):
    path, log = server
    before = log()
    run = subprocess.run(MASTERS + ["judge", "--responses", str(tmp_path / "none.parquet"), "--kind", "rule",
                                    "--questions", str(files / "q.parquet"), "--out", str(tmp_path / "j.parquet")],
                         env=_env(path, **extra), capture_output=True, text=True)
    assert run.returncode == 1 and "none.parquet" in run.stderr  # it ran, and failed as it should
    new = log()[len(before):]
    assert "job " not in new
    assert ("declined" in new) == ("SLURM_JOB_ID" not in extra)


def test_a_stopped_command_stops_its_job(files, server, direct, tmp_path):
    path, log = server
    q = ["--questions", str(files / "q.parquet")]
    before = len(log())
    client = subprocess.Popen(MASTERS + ["train", "--student", str(files / "student"), "--stage", "T",
                                         str(files / "teacher"), str(direct[0] / "r.parquet"), "100000", "0.0",
                                         "--batch-size", "4", "--out", str(tmp_path / "long"), *q],
                              env=_env(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while "masters worker: job " not in log()[before:]:
        assert time.time() < deadline and client.poll() is None, log()[before:]
        time.sleep(0.1)
    pid = int(log()[before:].split("masters worker: job ")[1].split(":")[0])
    time.sleep(2)
    os.kill(pid, 0)  # the job runs
    client.send_signal(signal.SIGTERM)
    client.wait()
    deadline = time.time() + 30
    while f"job {pid} cancelled" not in log():
        assert time.time() < deadline, log()[before:]
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (tmp_path / "long/final").exists()


def test_the_workflow_puts_its_checkout_first_on_the_jobs_pythonpath(monkeypatch, tmp_path):
    """Every job imports the checkout's package through PYTHONPATH (rules/common.smk), once."""
    from masters import worker

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    worker.export_package(tmp_path)
    worker.export_package(tmp_path)
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    worker.export_package(tmp_path)
    assert os.environ["PYTHONPATH"] == str(tmp_path)
