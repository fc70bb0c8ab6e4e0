#!/usr/bin/env bash
# Mutation testing of the core modules: mutmut puts one plausible bug at a time into masking,
# schedule, rewards, losses, forward, training, judge and tables ([tool.mutmut] in
# pyproject.toml) and runs the fast tests that cover it. Then scripts/mutation_report.py
# prints the score per module and checks that every survivor is explained
# (tests/mutation-equivalent.tsv), writing tests/mutation-survivors.md.
#
#   bash scripts/mutation.sh            # everything (about an hour on 2 cores); resumes if interrupted
#   bash scripts/mutation.sh --fresh    # discard earlier results first
#   bash scripts/mutation.sh --recheck  # test the survivors again (after adding tests); kills stay kills
#   bash scripts/mutation.sh --retime   # test the timeouts again (on a quiet machine: a timeout counts as a
#                                       # kill, and a loaded machine turns slow tests into timeouts)
#   bash scripts/mutation.sh 'masters.schedule*'   # only these mutants (mutmut name globs)
#
# Not part of CI (too long); the tests it leads to are.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --fresh) rm -rf mutants; shift ;;
    --recheck)
        shift
        # mutmut maps each function to the tests that reach it once, in mutmut-stats.json: a test
        # added since would never run against the old survivors. Collect the map again.
        rm -f mutants/mutmut-stats.json
        .venv/bin/python - <<'PY'
import json, pathlib
for meta in pathlib.Path("mutants").rglob("*.py.meta"):
    data = json.loads(meta.read_text())
    data["exit_code_by_key"] = {k: (None if v in (0, 5, 33) else v) for k, v in data["exit_code_by_key"].items()}
    meta.write_text(json.dumps(data))
PY
        ;;
    --retime)
        shift
        .venv/bin/python - <<'PY'
import json, pathlib
from mutmut.stats import status_by_exit_code
for meta in pathlib.Path("mutants").rglob("*.py.meta"):
    data = json.loads(meta.read_text())
    data["exit_code_by_key"] = {k: (None if status_by_exit_code.get(v) == "timeout" else v)
                                for k, v in data["exit_code_by_key"].items()}
    meta.write_text(json.dumps(data))
PY
        ;;
esac
if [ -d mutants/masters ]; then
    # mutmut refreshes the Python files of its copy, not the others: the config schema (read by
    # masters.config) and the also_copy files could be stale, and the clean run would fail
    (cd masters && find . -type f ! -name '*.py' ! -path '*/__pycache__/*' -exec cp --parents {} ../mutants/masters/ \;)
    cp -r config.yaml configs benchmarks rules Snakefile mutants/
fi
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-$(nproc)}" "$@"
.venv/bin/python scripts/mutation_report.py
