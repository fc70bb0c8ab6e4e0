"""`snakemake --profile slurm` on a real SLURM cluster (scripts/slurm-cluster.sh; CI brings one up
with 4 fake h100 GPUs, MASTERS_SLURM_FAKE_GPUS=4). Every job is read back from SLURM's own
accounting (sacct), not from Snakemake's word.

Without a cluster these tests are skipped, unless MASTERS_REQUIRE_SLURM=1 (set by .ci/run),
where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from masters.resources import family
from tests.conftest import REPO, SMOKE, snakemake, snakemake_command

LOCAL_RULES = {"all", "table", "fig2", "figF4", "world_accuracy_table"}
POLL = ["--slurm-init-seconds-before-status-checks", "2"]  # a one-machine cluster: poll fast
SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "Partition", "AllocCPUS", "ReqMem", "Timelimit", "ReqTRES"]


def _cluster_problem() -> str | None:
    if not shutil.which("sinfo") or not shutil.which("sacct"):
        return "no SLURM client commands (sinfo, sacct)"
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mixed", "allocated"} & set(state.stdout.split()):
        return f"no idle SLURM node ({(state.stdout + state.stderr).strip() or 'no nodes'})"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True).returncode != 0:
        return "sacct does not answer (no accounting storage)"
    return None


def unavailable(message: str):
    """Skip for lack of a cluster feature; under MASTERS_REQUIRE_SLURM=1 (CI) fail instead."""
    if os.environ.get("MASTERS_REQUIRE_SLURM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        unavailable(f"{problem}: start one with `sudo scripts/slurm-cluster.sh up`")


def slurm_snakemake(workdir, *args, logdir):
    """`snakemake --profile slurm` from the repository root, as a user runs it."""
    return snakemake(workdir, "--profile", "slurm", *POLL, "--slurm-logdir", str(logdir), *args, cwd=REPO, timeout=2400)


def run_id(output: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output[-3000:]
    return match.group(1)


def sacct(name: str) -> pd.DataFrame:
    """SLURM's accounting records of one Snakemake run (jobs are named by the run id)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "2020-01-01", f"--name={name}",
                          "-o", ",".join(SACCT_FIELDS)], capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    jobs = pd.DataFrame(rows, columns=SACCT_FIELDS)
    jobs["rule"] = jobs.Comment.str.extract(r"^rule_(.+?)(?:_wildcards_.*)?$")[0]
    return jobs


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's own plan: the first `Job stats:` block."""
    block = output[output.index("Job stats:"):].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0]: int(line.split()[1]) for line in block if line.split()[0] != "total"}


def overlay(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return str(path)


STATE = Path(os.environ.get("MASTERS_SLURM_STATE", "/var/lib/masters-slurm"))


def test_cluster_script_is_idempotent(cluster):
    """`up` on a running cluster starts nothing new and keeps its daemons and configuration."""
    if not (STATE / "pids").is_dir() or os.geteuid() != 0:
        pytest.skip("the cluster was not started by scripts/slurm-cluster.sh (or not as root)")
    pids = lambda: {p.name: p.read_text().strip() for p in (STATE / "pids").glob("*.pid")}
    conf = Path("/etc/slurm/slurm.conf").read_bytes()
    before = pids()
    run = subprocess.run(["bash", str(REPO / "scripts/slurm-cluster.sh"), "up"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "already up" in run.stdout and "started" not in run.stdout.replace("started by this script", "")
    assert pids() == before and set(before) >= {"munged.pid", "slurmdbd.pid", "slurmctld.pid", "slurmd.pid"}
    assert Path("/etc/slurm/slurm.conf").read_bytes() == conf
    status = subprocess.run(["bash", str(REPO / "scripts/slurm-cluster.sh"), "status"], capture_output=True, text=True)
    assert status.returncode == 0 and "slurmctld: running" in status.stdout and "localhost" in status.stdout


# Through SLURM: the slice of the smoke DAG behind Table 1 and the world's accuracy table (every
# rule family that submits jobs: data, tokenizer, sft, questions, mask, generate, judge, score, reward,
# train, evaluate; ~50 jobs). The whole smoke DAG (187 jobs) through SLURM takes ~20 min on this
# machine kind (two snakemake start-ups per SLURM job, plus polling), over CI's budget; it was
# run once and measured (README, "Running on SLURM").
TARGETS = ["results/smoke/tables/table1.csv", "results/smoke/world/accuracy.csv"]

# The mask family gets distinct resources in the SLURM run (masking is exact and single-stream, so
# outputs do not depend on them); they must reach sbatch and SLURM's accounting.
MASK = {"cpus": 2, "mem_mb": 1234, "runtime": 7, "slurm_partition": "debug"}


@pytest.fixture(scope="module")
def slurm_world(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    extra = overlay(tmp, "mask.yaml", {"resources": {"mask": MASK}})
    t0 = time.monotonic()
    run = slurm_snakemake(tmp / "wd", "--configfile", SMOKE, extra, "--", *TARGETS, logdir=tmp / "slurm-logs")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    print(f"Table 1 slice through SLURM: {time.monotonic() - t0:.0f} s")
    return {"results": tmp / "wd/results/smoke", "output": output, "jobs": sacct(run_id(output))}


@pytest.mark.slow
def test_every_job_is_a_slurm_job(slurm_world):
    planned = {rule: n for rule, n in job_stats(slurm_world["output"]).items() if rule not in LOCAL_RULES}
    jobs = slurm_world["jobs"]
    assert sum(planned.values()) >= 40
    assert set(planned) == {"world_data", "world_tokenizer", "world_sft", "train_questions", "mask", "generate",
                            "judge", "score", "reward", "train", "evaluate"}
    assert jobs.rule.value_counts().to_dict() == planned
    assert (jobs.State == "COMPLETED").all(), jobs[jobs.State != "COMPLETED"]


@pytest.mark.slow
def test_tables_through_slurm_equal_the_local_run(slurm_world, smoke_world):
    for name in ("tables/table1.csv", "tables/table1.md", "tables/table1.tex", "world/accuracy.csv"):
        assert (slurm_world["results"] / name).read_bytes() == (smoke_world / name).read_bytes(), name
    for checkpoint in ("world/models/S/model.safetensors", "students/S/masters/s0/final/model.safetensors"):
        assert (slurm_world["results"] / checkpoint).read_bytes() == (smoke_world / checkpoint).read_bytes(), checkpoint


@pytest.mark.slow
def test_a_family_resources_reach_sbatch(slurm_world):
    jobs = slurm_world["jobs"]
    mask = jobs[jobs.rule == "mask"]
    assert len(mask) == 2  # L at 0.10 and 0.20 (mask step 0.1)
    assert set(mask.Partition) == {"debug"} and set(mask.AllocCPUS) == {"2"}
    assert set(mask.ReqMem) == {"1234M"} and set(mask.Timelimit) == {"00:07:00"}
    # every other job asked for what config.yaml gives its family, on the default partition
    configured = yaml.safe_load((REPO / "config.yaml").read_text())["resources"]
    for rule, name in (("train", "train"), ("evaluate", "evaluate"), ("world_data", "default")):
        expected = family(configured, name, environ={})
        rows = jobs[jobs.rule == rule]
        assert set(rows.ReqMem) == {f"{expected.resources['mem_mb']}M"}, rule
        assert set(rows.AllocCPUS) == {str(expected.threads)} and set(rows.Partition) == {"main"}, rule
        minutes = expected.resources["runtime"]
        assert set(rows.Timelimit) == {f"{minutes // 60:02d}:{minutes % 60:02d}:00"}, rule
    assert not jobs.ReqTRES.str.contains("gres/gpu").any()  # the embedded default asks for no GPU


@pytest.fixture(scope="module")
def small_workdir(cluster, tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-small")


TRAIN_DATA = [f"results/smoke/world/data/{t}/train.parquet" for t in ("colour", "shape", "count", "size", "chart", "digits")]


@pytest.mark.slow
def test_a_failing_job_names_rule_and_slurm_id_and_the_rerun_runs_only_what_is_missing(small_workdir):
    wd, logs = small_workdir / "wd", small_workdir / "logs"
    bad = wd / TRAIN_DATA[2]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a parquet file")  # the planted bad input: train_questions reads it
    # --retries 0: the profile's one retry would only repeat the same failure
    run = slurm_snakemake(wd, "--retries", "0", "results/smoke/train/questions.parquet", logdir=logs)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    failed = sacct(run_id(output))
    failed = failed[failed.State == "FAILED"]
    assert list(failed.rule) == ["train_questions"], failed
    assert "Error in rule train_questions" in output
    for job_id in failed.JobID:
        assert job_id in output, job_id  # the SLURM job id is named in Snakemake's report
    done = {p for p in TRAIN_DATA if (wd / p).exists()}
    assert len(done) == 6  # the five good data jobs finished (keep-going) and are kept
    bad.unlink()  # the fix
    rerun = slurm_snakemake(wd, "results/smoke/train/questions.parquet", logdir=logs)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert job_stats(rerun.stdout + rerun.stderr) == {"world_data": 1, "train_questions": 1}
    assert (wd / "results/smoke/train/questions.parquet").stat().st_size > 0


def _cancel_when_running(log: Path, rule: str, process: subprocess.Popen, cancelled: list):
    """Once the job of `rule` runs (squeue: immediate; sacct lags a few seconds), scancel it."""
    while process.poll() is None:
        match = re.search(r"SLURM run ID: (\S+)", log.read_text()) if log.exists() else None
        if match:
            queue = subprocess.run(["squeue", "-h", f"--name={match.group(1)}", "-o", "%i|%T|%k"],
                                   capture_output=True, text=True).stdout
            for job_id, state, comment in (line.split("|", 2) for line in queue.splitlines() if line):
                if state == "RUNNING" and comment.startswith(f"rule_{rule}"):
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled.append(job_id)
                    return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_cancelled_job_is_reported_failed_and_the_rerun_completes_only_it(small_workdir):
    """--retries 0: the profile's one retry would otherwise resubmit the cancelled job itself."""
    wd, logs = small_workdir / "wd", small_workdir / "logs"
    target = "results/smoke/world/models/S"
    log = small_workdir / "cancel.log"
    cmd = snakemake_command(wd, "--profile", "slurm", *POLL, "--slurm-logdir", str(logs), "--retries", "0", target)
    cancelled: list[str] = []
    with open(log, "w") as sink:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)
        watcher = threading.Thread(target=_cancel_when_running, args=(log, "world_sft", process, cancelled))
        watcher.start()
        returncode = process.wait(timeout=900)
        watcher.join()
    output = log.read_text()
    assert cancelled, output[-3000:]
    assert returncode != 0
    assert f"SLURM-job '{cancelled[0]}' failed" in output and "CANCELLED" in output, output[-3000:]
    assert (wd / "results/smoke/world/processor").is_dir()  # finished before the cancel: kept
    rerun = slurm_snakemake(wd, target, logdir=logs)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert job_stats(rerun.stdout + rerun.stderr) == {"world_sft": 1}
    assert (wd / target / "model.safetensors").is_file()


def _has_fake_gpus() -> bool:
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    return "gpu:h100:4" in node


@pytest.mark.slow
@pytest.mark.parametrize("flag,submitted", [("gpus", "--gpus=h100:4"), ("gres", "--gres=gpu:h100:4")])
def test_a_gpu_request_reaches_sbatch_and_a_job_without_its_gpus_stops(small_workdir, tmp_path, flag, submitted):
    """gpu=4, gpu_model=h100 (the paper-scale request) on the sft family, as --gpus or as --gres:
    the submission carries it, SLURM allocates 4 (fake) h100s, and the job, which sees no CUDA
    device, stops before any work with a message naming the request."""
    if not _has_fake_gpus():
        unavailable("the cluster advertises no gpu:h100:4 (MASTERS_SLURM_FAKE_GPUS=4 scripts/slurm-cluster.sh up)")
    wd = small_workdir / "wd"
    assert (wd / "results/smoke/world/processor").is_dir(), "runs after the tests that build the world's data"
    extra = overlay(tmp_path, "gpu.yaml", {"resources": {"sft": {"gpu": 4, "gpu_model": "h100", "gpu_flag": flag}}})
    run = slurm_snakemake(wd, "--configfile", SMOKE, extra, "--retries", "0", "--verbose", "results/smoke/world/models/M",
                          logdir=small_workdir / "logs")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    call = re.search(r"sbatch call: (sbatch .*)", output)
    assert call and submitted in call.group(1), output[-3000:]
    other = "--gres" if flag == "gpus" else "--gpus"
    assert other not in call.group(1)  # one request, not two
    jobs = sacct(run_id(output))
    assert len(jobs) == 1 and "gres/gpu:h100=4" in jobs.ReqTRES.iloc[0] and jobs.State.iloc[0] == "FAILED"
    log = (wd / "results/smoke/logs/world/models/M.log").read_text()
    assert "asked for 4 GPU(s)" in log and "CUDA sees 0" in log and "SLURM_GPUS_ON_NODE=4" in log, log[-2000:]
    assert not (wd / "results/smoke/world/models/M").exists()


def test_paper_resources_dry_run_asks_for_the_gpus(tmp_path):
    """The paper-scale resources (configs/paper/common.yaml) over the smoke DAG: each family's
    GPU request is planned."""
    paper = yaml.safe_load((REPO / "configs/paper/common.yaml").read_text())["resources"]
    (tmp_path / "resources.yaml").write_text(yaml.safe_dump({"resources": paper}))
    run = snakemake(tmp_path / "wd", "-n", "--cores", "1", "--configfile", SMOKE, str(tmp_path / "resources.yaml"))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    blocks = re.split(r"^\[\w{3} \w{3} .*\d{4}\]$", output, flags=re.M)  # one block per planned job
    jobs = lambda rule: [(re.search(r"wildcards: (.*)", b).group(1), re.search(r"resources: (.*)", b).group(1))
                         for b in blocks if re.search(rf"^rule {rule}:$", b, re.M)]

    def family_of(rule, wildcards):  # the dataset answers need no GPU; a teacher's own evaluation more
        if rule == "generate" and "source=label" in wildcards:
            return "default"
        run = re.search(r"run=([^,]+)", wildcards)
        if rule == "evaluate" and (run.group(1).startswith("masked/") or re.fullmatch(r"models/(?!S$).+", run.group(1))):
            return "evaluate_teacher"  # a teacher's own checkpoint, masked or not (the student S is not one)
        return rule

    seen = set()
    for rule in ("train", "score", "generate", "evaluate"):
        assert jobs(rule), rule
        for wildcards, line in jobs(rule):
            name = family_of(rule, wildcards)
            seen.add(name)
            expected = family(paper, name, environ={}).resources
            assert f"gpu={expected['gpu']}," in line and f"mem_mb={expected['mem_mb']}," in line, (rule, line)
            assert f"runtime={expected['runtime']}," in line, (rule, line)
            assert f"gpu_model={expected['gpu_model']}" in line if expected["gpu"] else "gpu_model" not in line, line
    assert seen == {"train", "score", "generate", "evaluate", "evaluate_teacher", "default"}, seen
    assert family(paper, "train", environ={}).resources["gpu"] == 8
    judges = [(re.search(r"judge=(\S+?),", b).group(1), re.search(r"resources: (.*)", b).group(1))
              for b in blocks if re.search(r"^rule judge:$", b, re.M)]
    assert {judge for judge, _ in judges} == {"rule", "llm-J"}
    for judge, line in judges:  # the LLM judge asks for the judge family, the rule judge for default
        assert ("gpu=1, gpu_model=h100," in line) if judge == "llm-J" else ("gpu=0," in line and "gpu_model" not in line), line
