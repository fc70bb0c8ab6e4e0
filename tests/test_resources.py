"""Resources per rule family (masters/resources.py) and the GPU check (masters/devices.py)."""

import pytest
import yaml

from masters.devices import GPUsMissing, require_gpus
from masters.resources import FAMILIES, ResourcesError, all_families, family
from tests.conftest import REPO

BASE = {"cpus": 2, "mem_mb": 1000, "runtime": 30, "gpu": 0}


def test_a_family_overrides_default_and_the_rest_is_inherited():
    section = {"default": {**BASE, "slurm_partition": "cpu"}, "train": {"cpus": 8, "gpu": 4, "gpu_model": "h100"}}
    train = family(section, "train", environ={})
    assert train.threads == 8
    assert train.resources == {"mem_mb": 1000, "runtime": 30, "job_gpus": 4, "gpu": 4, "gpu_model": "h100",
                               "slurm_partition": "cpu"}
    mask = family(section, "mask", environ={})
    assert mask.threads == 2
    assert mask.resources == {"mem_mb": 1000, "runtime": 30, "job_gpus": 0, "gpu": 0, "slurm_partition": "cpu"}


def test_a_teachers_evaluation_is_merged_over_the_evaluation_family():
    section = {"default": BASE, "evaluate": {"cpus": 8, "gpu": 1, "runtime": 99}, "evaluate_teacher": {"gpu": 4}}
    teacher = family(section, "evaluate_teacher", environ={})
    assert teacher.threads == 8 and teacher.resources["runtime"] == 99 and teacher.resources["job_gpus"] == 4
    assert family({"default": BASE, "evaluate": {"gpu": 1}}, "evaluate_teacher", environ={}).resources["gpu"] == 1


def test_gpu_model_is_dropped_without_gpus():
    section = {"default": {**BASE, "gpu_model": "h100"}, "evaluate": {"gpu": 1}}
    assert "gpu_model" not in family(section, "mask", environ={}).resources
    assert family(section, "evaluate", environ={}).resources["gpu_model"] == "h100"


def test_gres_flag_carries_the_request_as_a_generic_resource_instead():
    section = {"default": {**BASE, "gpu_flag": "gres"}, "train": {"gpu": 4, "gpu_model": "a100"}, "judge": {"gpu": 1}}
    train = family(section, "train", environ={}).resources
    assert train["gres"] == "gpu:a100:4" and train["job_gpus"] == 4
    assert "gpu" not in train and "gpu_model" not in train  # the plugin would add --gpus as well
    assert family(section, "judge", environ={}).resources["gres"] == "gpu:1"
    assert "gres" not in family(section, "mask", environ={}).resources


def test_partition_and_account_from_the_environment_unless_configured():
    env = {"SBATCH_PARTITION": "gpu-a100", "SBATCH_ACCOUNT": "proj42"}
    assert family({"default": BASE}, "train", environ=env).resources == {
        "mem_mb": 1000, "runtime": 30, "job_gpus": 0, "gpu": 0, "slurm_partition": "gpu-a100", "slurm_account": "proj42"}
    configured = {"default": {**BASE, "slurm_account": "mine"}, "train": {"slurm_partition": "long"}}
    train = family(configured, "train", environ=env).resources
    assert train["slurm_partition"] == "long" and train["slurm_account"] == "mine"
    assert "slurm_partition" not in family({"default": BASE}, "train", environ={}).resources


@pytest.mark.parametrize("section,key", [
    ({"default": {**BASE, "cpus": 0}}, "resources.default.cpus"),
    ({"default": BASE, "train": {"mem_mb": -5}}, "resources.train.mem_mb"),
    ({"default": BASE, "score": {"gpu": -1}}, "resources.score.gpu"),
    ({"default": {"cpus": 1, "mem_mb": 1, "runtime": 1}}, "resources.default: missing gpu"),
    ({"default": BASE, "train": {"slurm_extra": "--exclusive --gres=gpu:2"}}, "resources.train.slurm_extra: --gres"),
    ({"default": {**BASE, "slurm_extra": "-t 10"}}, "resources.default.slurm_extra: -t"),
    ({"default": BASE, "trainer": {"cpus": 2}}, "resources.trainer: unknown family"),
    ({"default": BASE, "train": {"gpu_flag": "gpu"}}, "resources.train.gpu_flag"),
])
def test_bad_entries_name_the_key(section, key):
    with pytest.raises(ResourcesError, match="invalid config: key " + key.replace(".", r"\.")):
        all_families(section, environ={})


def test_slurm_extra_passes_other_flags():
    section = {"default": BASE, "train": {"slurm_extra": "--exclusive --mail-type=END"}}
    assert family(section, "train", environ={}).resources["slurm_extra"] == "--exclusive --mail-type=END"


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper/common.yaml"])
def test_shipped_resource_configs_resolve_for_every_family(path):
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / path).read_text()))  # as --configfile merges it
    section = config["resources"]
    resolved = all_families(section, environ={})
    assert set(resolved) == set(FAMILIES)
    gpus = {name: r.resources["gpu"] for name, r in resolved.items()}
    if path == "config.yaml":  # the embedded default: CPU only, small memory
        assert set(gpus.values()) == {0}
        assert max(r.resources["mem_mb"] for r in resolved.values()) <= 4000
    else:
        assert gpus["train"] == 8 and gpus["generate"] == gpus["score"] == 4 and gpus["mask"] == 0


def test_a_job_that_sees_fewer_gpus_than_it_asked_for_stops_with_the_reason():
    env = {"SLURM_JOB_ID": "17", "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(GPUsMissing) as stop:
        require_gpus(2, "train", visible=1, environ=env)
    message = str(stop.value)
    assert "masters train" in message and "asked for 2 GPU(s)" in message and "CUDA sees 1" in message
    assert "SLURM_JOB_ID=17" in message and "SLURM_GPUS_ON_NODE=2" in message and "CUDA_VISIBLE_DEVICES=0" in message
    assert stop.value.code == message  # SystemExit with a message: exit status 1, message on stderr


def test_enough_gpus_or_none_asked_for_pass():
    assert require_gpus(0, "train", visible=0, environ={}) == 0
    assert require_gpus(2, "train", visible=2, environ={}) == 2
    assert require_gpus(2, "train", visible=8, environ={}) == 2
    with pytest.raises(GPUsMissing, match="CUDA sees 0"):
        require_gpus(1, "generate", environ={})  # this machine: no CUDA device


def test_the_cli_checks_gpus_before_any_work(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "masters.cli", "train", "--student", str(tmp_path / "missing"),
                          "--questions", str(tmp_path / "q.parquet"), "--stage", "T", "T", "R", "1", "0",
                          "--gpus", "2", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 1
    assert "masters train: this job asked for 2 GPU(s)" in run.stderr and "CUDA sees 0" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_job_places_its_models_by_the_gpus_it_has():
    """CPU jobs in fp32; one GPU: cuda in bf16; several: spread over them (device_map auto: a
    72B teacher does not fit one 80 GB GPU); GPUs asked for but not seen: the CPU (require_gpus
    stops such a job first)."""
    from masters.devices import placement

    assert placement(0, visible=8) == ("cpu", "float32")
    assert placement(1, visible=8) == ("cuda", "bfloat16")
    assert placement(4, visible=4) == ("auto", "bfloat16")
    assert placement(2, visible=0) == ("cpu", "float32")


def test_device_auto_loads_with_device_map_auto(monkeypatch, tmp_path):
    import transformers

    from masters import checkpoints

    calls = []

    class Model:
        def to(self, device):
            calls.append(("to", device))
            return self

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: type("C", (), {"model_type": "qwen2_5_vl"})())
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained",
                        lambda *a, **k: calls.append(("load", k.get("device_map"))) or Model())
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: "processor")
    checkpoints.load_checkpoint(tmp_path, device="auto")
    checkpoints.load_checkpoint(tmp_path, device="cpu")
    assert calls == [("load", "auto"), ("load", None), ("to", "cpu")]
