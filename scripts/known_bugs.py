"""Put each of the review's plausible one-line bugs into a copy of the package, run the fast
tests, and report which test fails (issue: mutation-test the core). Every bug must be caught.

    .venv/bin/python scripts/known_bugs.py            # all bugs (about 5 minutes on 2 cores)
    .venv/bin/python scripts/known_bugs.py --only kl  # the bugs whose name contains "kl"

The copy is a temporary `git worktree` of HEAD, so uncommitted changes are not tested.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST = ["tests/test_losses.py", "tests/test_wiring.py", "tests/test_rewards.py", "tests/test_pipeline.py"]

# name -> [(file, text, replacement)]: one bug may need two edits (the review's fourth).
BUGS = {
    "k3 KL direction reversed": [
        ("masters/losses.py", "diff = logp_ref - logp_theta", "diff = logp_theta - logp_ref")],
    "response positions shifted by one": [
        ("masters/forward.py", "predicts[i, p - 1 : p - 1 + len(response)] = True",
         "predicts[i, p : p + len(response)] = True")],
    "advantages per batch, not per group": [
        ("masters/training.py", 'rows.groupby("question_id")["r_total"]', 'rows.groupby(0 * rows["r_total"])["r_total"]')],
    "per-chunk mean and advantages in reverse order": [
        ("masters/training.py", '(parts["loss"].sum() / n).backward()', 'parts["loss"].mean().backward()'),
        ("masters/training.py", 'zip(rows["advantage"], s_batch.lengths)',
         'zip(rows["advantage"][::-1], s_batch.lengths)')],
    "group_rewards ignores use_acc": [
        ("masters/rewards.py", 'acc = frame["r_acc"] if use_acc else 0.0', 'acc = frame["r_acc"]')],
    "group_rewards ignores use_distill": [
        ("masters/rewards.py", 'if use_distill else 0.0)', ')')],
    "group_rewards ignores alpha": [
        ("masters/rewards.py", 'alpha * frame["r_distill"]', 'frame["r_distill"]')],
    "training never resumes (load_state returns nothing)": [
        ("masters/training.py", 'return json.loads((out / "trainer_state.json").read_text())', "return None")],
    "generation never resumes (parts regenerated)": [
        ("masters/generation.py", "continue  # done before an interruption", "pass")],
}


def run(bug: str, edits, tree: Path) -> tuple[bool, str]:
    for file, text, replacement in edits:
        path = tree / file
        source = path.read_text()
        if source.count(text) != 1:
            sys.exit(f"{bug}: {text!r} is not exactly once in {file}: update scripts/known_bugs.py")
        path.write_text(source.replace(text, replacement))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "-k", "not sigkilled", *FAST], cwd=tree, capture_output=True, text=True)
    finally:
        subprocess.run(["git", "checkout", "--", "."], cwd=tree, check=True)
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return proc.returncode != 0, (failed[0] if failed else proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the bugs whose name contains this text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), "HEAD"], cwd=REPO, check=True,
                       capture_output=True)
        try:
            missed = 0
            for bug, edits in BUGS.items():
                if args.only not in bug:
                    continue
                caught, by = run(bug, edits, tree)
                missed += not caught
                print(f"{'caught' if caught else 'MISSED'}  {bug:52} {by}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
