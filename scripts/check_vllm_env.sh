#!/usr/bin/env bash
# Check envs/vllm.yaml (the vLLM rules' environment) as far as a CPU machine can:
#  1. its pip pins resolve together (pip install --dry-run: metadata only, nothing installed);
#  2. the code its rules run (generation, the judges, judged benchmarks, the vLLM backend against
#     a stand-in engine) passes its tests with the env's transformers (5.20.2, shadowing .venv's).
# vLLM itself is not installed (CUDA wheels). Needs the package registry.
#   bash scripts/check_vllm_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -n '/- pip:/,$p' envs/vllm.yaml | sed -n 's/^ *- \(.*==.*\)$/\1/p' > "$work/requirements.txt"
echo "== 1. $(wc -l < "$work/requirements.txt") pins of envs/vllm.yaml resolve together?"
.venv/bin/python -m pip install --dry-run --ignore-installed --quiet --report "$work/report.json" \
    -r "$work/requirements.txt" 2>&1 | grep -v -e '^WARNING' -e 'Ignored the following' || true
.venv/bin/python - "$work/report.json" "$work/requirements.txt" <<'PY'
import json, sys
got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
want = dict(line.strip().lower().split("==") for line in open(sys.argv[2]) if line.strip())
bad = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
print(f"   resolved {len(got)} packages; pins honoured: {not bad}" + (f" {bad}" if bad else ""))
sys.exit(1 if bad else 0)
PY
version=$(sed -n 's/^ *- transformers==\(.*\)$/\1/p' envs/vllm.yaml)
echo "== 2. the vLLM rules' code with transformers $version"
.venv/bin/python -m pip install --quiet --no-deps --target "$work/tf" "transformers==$version" 2>&1 | grep -v '^WARNING' || true
PYTHONPATH="$work/tf" .venv/bin/python -c "import transformers; print('   transformers', transformers.__version__)"
PYTHONPATH="$work/tf" .venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_vllm.py tests/test_judge.py tests/test_benchmark_judge.py \
    tests/test_pipeline.py::test_generation_writes_schema_and_resumes_identically \
    tests/test_pipeline.py::test_cli_chain_generate_judge_reward_train 2>&1 | tail -3
