"""Packaging: pins agree across pyproject and envs/, GPU backends stay optional, CLI help."""

import re
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import REPO


def _pins(lines):
    return dict(re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", l).groups() for l in lines if "==" in l)


def test_conda_env_pins_match_pyproject():
    """envs/masters.yaml (every rule's environment under --sdm conda, the train jobs' with the
    DeepSpeed backend among them) = the package's pins + its `gpu` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs/masters.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(project["dependencies"] + project["optional-dependencies"]["gpu"]) == _pins(pip_section)
    assert all("==" in d for d in project["dependencies"]), "runtime dependencies are pinned"


def test_the_vllm_env_differs_from_the_package_pins_only_where_vllm_pins_its_own():
    """envs/vllm.yaml (the vLLM rules' environment; scripts/check_vllm_env.sh resolves it) keeps
    the package's pins except vLLM's own: torch, torchvision, transformers (< 5.21) and numpy."""
    project = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    env = yaml.safe_load((REPO / "envs/vllm.yaml").read_text())
    vllm = _pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))
    differ = {k for k in vllm if k in project and vllm[k] != project[k]}
    assert differ == {"torch", "torchvision", "transformers", "numpy"}, differ
    assert "vllm" in vllm and not set(vllm) - set(project) - {"vllm"}  # nothing the package does not use


def test_vllm_jobs_run_the_package_from_the_repository_in_their_own_environment(tmp_path):
    """With the vLLM backends, generate / judge jobs run `python -m masters.cli` (their environment
    cannot install this package) in envs/vllm.yaml; every job imports this checkout's package
    through PYTHONPATH, set by the workflow, not through a path in its command or params (moving
    the checkout reruns no job)."""
    (tmp_path / "vllm.yaml").write_text("generation: {backend: vllm}\njudge: {backend: vllm, kind: llm}\n")
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "-p",
                          "--directory", str(tmp_path), "--configfile", str(tmp_path / "vllm.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "python -m masters.cli generate " in run.stdout and "python -m masters.cli judge " in run.stdout
    assert "masters train " in run.stdout and "python -m masters.cli train" not in run.stdout
    commands = [line for line in run.stdout.splitlines() if "masters" in line and " --" in line]
    for command in ("generate ", "judge ", "evaluate ", "train "):
        assert any(command in line for line in commands), command
    assert not [line for line in commands if str(REPO) in line and "table --spec" not in line], REPO
    common = (REPO / "rules/common.smk").read_text()
    assert "worker.export_package(REPO)" in common
    common = (REPO / "rules/common.smk").read_text()
    assert '"../envs/vllm.yaml" if backend == "vllm"' in common
    for rule in ("generate.smk", "judge.smk"):
        assert "env_of(" in (REPO / "rules" / rule).read_text()


def test_gpu_backends_are_not_imported():
    code = "import sys, masters.cli, masters.evaluation, masters.world.sft; print(sorted(m for m in ('vllm', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_cli_flag_has_help():
    from masters.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            if action.dest != "help":
                assert action.help, f"masters {name} {action.option_strings} has no help"


def test_snakemake_lint_is_clean_and_rules_are_snakefmt_formatted():
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Congratulations" in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-3000:]
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "rules").glob("*.smk")))]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
