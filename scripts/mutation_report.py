"""Mutation score of the core modules and the survivors, after `mutmut run` (scripts/mutation.sh).

Every mutant that survives the fast tests must be either killed by a test or explained:
- automatically, when the mutant only rewords (or blanks) the text of an error, warning,
  progress bar or help string — the error type and the condition that raises it are unchanged;
- by hand, in tests/mutation-equivalent.tsv (``mutant<TAB>why it cannot change a result``).
Writes tests/mutation-survivors.md (one line per survivor) and exits 1 if a survivor is
explained neither way, printing its diff.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tokenize
from collections import Counter
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

REPO = Path(__file__).resolve().parents[1]
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
MESSAGE_STATEMENT = re.compile(r"^\s*(raise\b|warnings\.warn\(|log\w*\.(debug|info|warning|error)\(|print\()")


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [line for line in diff.splitlines() if not line.startswith(("+++", "---", "@@"))]
    return [l[1:] for l in body if l.startswith("-")], [l[1:] for l in body if l.startswith("+")]


def code_tokens(line: str) -> list[str] | None:
    """The non-string tokens of one line (None if it does not tokenize on its own)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    skip = {tokenize.STRING, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT,
            tokenize.INDENT, tokenize.DEDENT}
    return [t.string for t in toks if t.type not in skip]


def statement_head(diff: str, changed: str) -> str:
    """The first line of the statement a changed line belongs to (for continuation lines)."""
    lines = [l[1:] for l in diff.splitlines() if not l.startswith(("+++", "---", "@@", "+"))]
    try:
        at = lines.index(changed)
    except ValueError:
        return changed
    while at > 0 and lines[at].lstrip().startswith(("f\"", "\"", "f'", "'", "+ ", ")")):
        at -= 1
    return lines[at]


def message_only(diff: str) -> bool:
    """True if the mutant changes only the text of an error/warning/log message or of a
    ``help=``/``desc=`` string (the statement, its condition and its error type unchanged)."""
    old, new = changed_lines(diff)
    if len(old) != 1 or len(new) != 1:
        return False
    keyword = re.compile(r"\b(help|desc)=[fbr]?(\"[^\"]*\"|'[^']*')")
    if keyword.search(old[0]) and keyword.sub("K", old[0]) == keyword.sub("K", new[0]):
        return True
    if not MESSAGE_STATEMENT.match(statement_head(diff, old[0])):
        return False
    a, b = code_tokens(old[0]), code_tokens(new[0])
    if a is None or b is None:  # a continuation line of the message: compare without its strings
        strings = re.compile(r"[fbr]?(\"[^\"]*\"|'[^']*')")
        return strings.sub("S", old[0]).strip() == strings.sub("S", new[0]).strip() or new[0].strip() == "None"
    # equal but for strings, or `raise E("...")` -> `raise E(None)`
    return a == b or [t for t in b if t != "None"] == a


def load(modules: list[str]) -> dict[str, tuple[str, str]]:
    """mutant name -> (module path, status)."""
    out = {}
    for module in modules:
        meta = REPO / "mutants" / (module + ".meta")
        if not meta.exists():
            sys.exit(f"{meta}: no mutmut results; run scripts/mutation.sh first")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = (module, status_by_exit_code[code])
    return out


def main() -> int:
    import tomllib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--equivalent", type=Path, default=REPO / "tests/mutation-equivalent.tsv",
                        help="hand-kept list: mutant, tab, why it cannot change any result")
    parser.add_argument("--out", type=Path, default=REPO / "tests/mutation-survivors.md",
                        help="where to write the one-line-per-survivor list")
    parser.add_argument("--show", type=int, default=20, help="print the diffs of this many unexplained survivors")
    args = parser.parse_args()

    modules = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    import os

    os.chdir(REPO)  # mutmut reads mutants/ relative to the working directory
    results = load(modules)
    hand = {}
    if args.equivalent.exists():
        for line in args.equivalent.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, why = line.partition("\t")
                hand[name.strip()] = why.strip()
    rows, unexplained, per_module = [], [], {m: Counter() for m in modules}
    for name, (module, status) in sorted(results.items()):
        per_module[module][status] += 1
        if status in KILLED:
            continue
        diff = get_diff_for_mutant(name, path=Path(module))
        if name in hand:
            rows.append((module, name, status, "by hand", hand[name]))
        elif status == "survived" and message_only(diff):
            rows.append((module, name, status, "message", "changes only the text of a message"))
        else:
            unexplained.append((module, name, status, diff))
    stale = sorted(set(hand) - {r[1] for r in rows})
    print(f"{'module':24} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    total = Counter()
    for module, counts in per_module.items():
        n = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        total.update(counts)
        print(f"{module:24} {n:8d} {killed:7d} {counts['survived']:9d} {counts['no tests']:9d} {100 * killed / max(n, 1):6.1f}%")
    n, killed = sum(total.values()), sum(total[s] for s in KILLED)
    print(f"{'all':24} {n:8d} {killed:7d} {total['survived']:9d} {total['no tests']:9d} {100 * killed / max(n, 1):6.1f}%")
    auto = sum(r[3] == "message" for r in rows)
    print(f"survivors explained: {auto} message-only, {len(rows) - auto} by hand; unexplained: {len(unexplained)}")
    lines = ["# Surviving mutants of the core modules", "",
             "Generated by `scripts/mutation_report.py` after `scripts/mutation.sh`; one line per mutant",
             "that the fast tests do not kill, with why it cannot change any result.", "",
             f"Score: {killed} of {n} mutants killed ({100 * killed / max(n, 1):.1f} %).", ""]
    lines += [f"- `{name}` ({status}, {kind}): {why}" for _, name, status, kind, why in rows]
    lines += [f"- `{name}` ({status}): **unexplained**" for _, name, status, _ in unexplained]
    args.out.write_text("\n".join(lines) + "\n")
    for _, name, status, diff in unexplained[: args.show]:
        print(f"\n## {name} ({status})\n" + "\n".join(l for l in diff.splitlines() if l[:1] in "+-"))
    if stale:
        print(f"\n{len(stale)} hand-listed mutants are no longer survivors (remove them): {stale[:10]}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
