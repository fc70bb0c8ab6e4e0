#!/usr/bin/env bash
# The GPU check (issue #13): the smoke scale's generate -> judge -> reward -> train (torch, then
# DeepSpeed ZeRO-3) -> evaluate on one GPU in bf16, with the time of each kind of job and the
# smoke Table 1 of both trainings, and the smoke Table 5f (torch: LLaVA-KD's terms run there only). Made for the lent GPU machine (one H100/H200, no network,
# PyTorch and transformers preinstalled, Python 3.12); budget: 8 minutes.
#
#   bash scripts/gpu_check.sh prepare   # here (CPU, package registries reachable), ~3 min:
#       builds the world of configs/gpu_check.yaml (data, tokenizer, the SFT'd L, M, S, J) on the CPU
#       into results/gpu_check, and downloads into .whl/ the wheels (Python 3.12, manylinux) of the
#       pinned packages the GPU machine's image lacks (scripts/gpu_image_packages.txt) + transformers
#   bash scripts/gpu_check.sh run       # there: carry .whl and results/gpu_check; with the device
#       tool, $OUT receives the log, the timings and both Table 1s
#   GPU_CHECK_CPU=1 bash scripts/gpu_check.sh run   # rehearsal here: the same jobs on the CPU (.venv)
# On the GPU it ends with bench/bench_jsd_gpu.py (token_jsd vs TRL's and Liger-Kernel's JSD).
#
# Nothing of it is part of CI (no GPU there); the smoke DAG it runs is.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=results/gpu_check
CONFIGS=(configs/smoke.yaml configs/gpu_check.yaml)  # + the run's own, last
TARGET=$RESULTS/tables/table1.csv
OUT_DIR=${OUT:-$RESULTS/check}
# transformers is preinstalled there, but at another version than the one pinned and tested here
CARRY_ANYWAY=(transformers)

prepare() {
    local py=.venv/bin/python
    [ -x $py ] || scripts/setup.sh
    $py -m snakemake --cores "$(nproc)" --until world_sft --configfile "${CONFIGS[@]}"
    rm -rf .whl && mkdir .whl
    # the pinned closure of masters' and deepspeed's requirements, minus what the image has
    $py - "${CARRY_ANYWAY[@]}" > .whl/requirements.txt <<'PY'
import importlib.metadata as md, re, sys, tomllib
from packaging.requirements import Requirement

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
image = {norm(line.strip()) for line in open("scripts/gpu_image_packages.txt") if line.strip() and not line.startswith("#")}
seen, todo = {}, ["masters", "deepspeed"]
while todo:
    dist = md.distribution(todo.pop())
    if norm(dist.metadata["Name"]) in seen:
        continue
    seen[norm(dist.metadata["Name"])] = dist.version
    todo += [r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})]
keep = set(map(norm, sys.argv[1:]))
for name, version in sorted(seen.items()):
    if name != "masters" and (name not in image or name in keep):
        print(f"{name}=={version}")
# the peers of bench/bench_jsd_gpu.py (the bench extra, pinned there); their own needs are in the image
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]:
    print(req)
PY
    local platforms=()
    for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    while read -r req; do
        # a wheel for CPython 3.12 on x86-64 Linux; a package published only as an sdist (pure
        # Python: deepspeed without its ops, rouge-score, sqlitedict, word2number) is built here
        $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --abi cp312 --abi abi3 --abi none "${platforms[@]}" --platform manylinux2014_x86_64 --platform any \
            -d .whl "$req" 2>/dev/null \
        || DS_BUILD_OPS=0 $py -m pip wheel -q --no-deps --no-build-isolation -w .whl "$req"
    done < .whl/requirements.txt
    echo "gpu_check: $(ls .whl/*.whl | wc -l) wheels, $(du -sm .whl | cut -f1) MB; world $(du -sm $RESULTS | cut -f1) MB"
    echo "gpu_check: now, on the GPU machine: bash scripts/gpu_check.sh run (carry .whl and $RESULTS)"
}

summary() {  # seconds per kind of job (Snakemake's benchmark files) and the table
    local results=$1 name=$2
    "$PY" - "$results" "$name" "$OUT_DIR" <<'PY'
import pathlib, sys
import pandas as pd

results, name, out = map(pathlib.Path, sys.argv[1:])
rows = []
for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
    kind = tsv.relative_to(results / "benchmarks").parts[0]
    rows.append({"kind": kind, "s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])})
times = pd.DataFrame(rows).groupby("kind")["s"].agg(jobs="count", total_s="sum", max_s="max").round(1)
times.to_csv(out / f"{name}_timings.csv")
print(f"--- {name}: seconds per kind of job\n{times.to_string()}")
losses = {str(log.parent.relative_to(results / "students")): pd.read_csv(log)["loss"].iloc[-1]
          for log in sorted((results / "students").glob("*/*/*/train_log.csv"))}
print(f"--- {name}: last training loss\n" + pd.Series(losses, name="loss").round(5).to_string())
print(f"--- {name}: {results}/tables/table1.md\n" + (results / "tables/table1.md").read_text())
PY
    cp "$results/tables/table1.csv" "$OUT_DIR/${name}_table1.csv"
}

smk() {  # targets first: --configfile and --forcerun take every word after them
    "$PY" -m snakemake --cores "$(nproc)" "$@" --quiet reason --configfile "${CONFIGS[@]}" && return
    local status=$? log  # the failed jobs' own logs (nothing else of the machine comes back)
    for log in $(grep -l -i -E "error|exception|traceback" -r "$RESULTS"*/logs 2>/dev/null); do
        echo "=== $log" && tail -n 25 "$log"
    done
    return $status
}

run() {
    mkdir -p "$OUT_DIR"
    if [ -n "${GPU_CHECK_CPU:-}" ]; then  # rehearsal: every job on the CPU
        PY=.venv/bin/python
        printf 'resources: {%s}\n' "generate: {gpu: 0}, judge: {gpu: 0}, score: {gpu: 0}, train: {gpu: 0}, evaluate: {gpu: 0}" \
            > "$OUT_DIR/cpu.yaml"
        CONFIGS+=("$OUT_DIR/cpu.yaml")
    else
        PY=python3
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
        mkdir -p /tmp/site/bin
        printf '#!/bin/sh\nexec %s -c "import sys; from masters.cli import main; sys.exit(main())" "$@"\n' "$(command -v $PY)" \
            > /tmp/site/bin/masters
        chmod +x /tmp/site/bin/masters
        nvidia-smi -L
        $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
    fi
    $PY -c "import transformers, deepspeed, lm_eval, snakemake; print('transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'lm_eval', lm_eval.__version__, 'snakemake', snakemake.__version__)"
    [ -d $RESULTS/world/models/S ] || { echo "gpu_check: no world in $RESULTS: run 'prepare' here first" >&2; exit 1; }
    # the carried world is complete: mark it up to date (copies do not keep Snakemake's metadata)
    smk --until world_sft --touch
    local t0=$SECONDS
    smk "$TARGET"
    echo "gpu_check: torch backend, Table 1 slice in $((SECONDS - t0)) s"
    summary $RESULTS torch
    # Table 5f: DistiLLM's divergences and LLaVA-KD's visual terms, frozen parts and staged recipe on CUDA
    t0=$SECONDS
    smk "$RESULTS/tables/table5f.csv"
    echo "gpu_check: Table 5f (DistiLLM, LLaVA-KD and its recipe, without and with Masters) in $((SECONDS - t0)) s"
    cat "$RESULTS/tables/table5f.md" && cp "$RESULTS/tables/table5f.csv" "$OUT_DIR/torch_table5f.csv"
    # the same slice trained by DeepSpeed ZeRO-3 (one process on the one GPU): the copy keeps the
    # masked teachers, responses and rewards; the students, their evaluations and the tables follow
    local ds=${RESULTS}_deepspeed
    rm -rf "$ds" && cp -a $RESULTS "$ds" && rm -rf "$ds/benchmarks" "$ds/check"
    # (Table 5f left out: its LLaVA-KD recipe row trains with the torch backend only)
    printf 'results: %s\ntraining: {backend: deepspeed}\ntables: {table5f: null}\n' "$ds" > "$OUT_DIR/deepspeed.yaml"
    t0=$SECONDS
    CONFIGS+=("$OUT_DIR/deepspeed.yaml")
    smk "$ds/tables/table1.csv" --forcerun train
    echo "gpu_check: deepspeed backend, retraining and evaluating in $((SECONDS - t0)) s"
    summary "$ds" deepspeed
    # issue #16: the distillation JSD against TRL's and Liger-Kernel's fused one (CUDA only)
    if [ -z "${GPU_CHECK_CPU:-}" ]; then
        TRL_EXPERIMENTAL_SILENCE=1 timeout 180 $PY bench/bench_jsd_gpu.py --json "$OUT_DIR/jsd_gpu.json" \
            || echo "gpu_check: bench/bench_jsd_gpu.py failed (exit $?)"
    fi
}

case "${1:-}" in
    prepare) prepare ;;
    run) mkdir -p "$OUT_DIR"; run 2>&1 | tee "$OUT_DIR/log.txt" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
