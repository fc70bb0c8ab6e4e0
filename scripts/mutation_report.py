"""Mutation score of the core modules and the survivors, after `mutmut run` (scripts/mutation.sh).

Every mutant that survives the fast tests must be either killed by a test or explained:
- automatically, when the mutant only rewords (or blanks) the text of an error, warning,
  progress bar or help string — the error type and the condition that raises it are unchanged;
- by hand, in tests/mutation-equivalent.tsv: ``mutant<TAB>mutated line<TAB>why``. The mutant
  may be a glob over a function's mutants (their numbers shift when the function changes), the
  mutated line (the mutant's ``+`` lines, stripped) pins which one; ``*`` takes all of them,
  only for a function that cannot change a result at all (e.g. a page-cache hint).
Writes tests/mutation-survivors.md (one line per survivor) and exits 1 if a survivor is
explained neither way, printing its diff.
"""

from __future__ import annotations

import argparse
import fnmatch
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
HELP_TEXT = re.compile(r"\b(help|description)=")  # argparse: text shown to a user, never parsed
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


def _is_string_line(line: str) -> bool:
    """A continuation line holding only string literals (``"..." "..."``, maybe closing a call)."""
    return re.fullmatch(r"\s*([fbr]?(\"[^\"]*\"|'[^']*')\s*)+\)?,?\s*", line) is not None


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
    if len(old) > 1 and len(new) == 1 and new[0].strip() in ("None", "None,", "None)"):
        # a message spread over several string lines, blanked: all of them strings of one raise
        strings = re.compile(r"\s*[fbr]?(\"[^\"]*\"|'[^']*')\s*,?\s*")
        return all(strings.fullmatch(line) for line in old) and bool(MESSAGE_STATEMENT.match(statement_head(diff, old[0])))
    if len(old) != 1 or len(new) != 1:
        return False
    keyword = re.compile(r"\b(help|desc|description)=([fbr]?(\"[^\"]*\"|'[^']*')|None)")
    if keyword.search(old[0]) and keyword.sub("K", old[0]) == keyword.sub("K", new[0]):
        return True
    head = statement_head(diff, old[0])
    if not MESSAGE_STATEMENT.match(head) and not (HELP_TEXT.search(head) and _is_string_line(old[0])):
        return False
    a, b = code_tokens(old[0]), code_tokens(new[0])
    if a is not None and b is not None and b != a and [t for t in b if t != "None"] == a:
        return True  # `raise E(f"...")` -> `raise E(None)`: the message argument replaced by None
    fields = re.compile(r"\{([^{}]*)\}")  # f-string replacement fields are code: a change there is not text
    if fields.findall(old[0]) != fields.findall(new[0]) and new[0].strip() not in ("None", "None,"):
        return False
    if a is None or b is None:  # a continuation line of the message: compare without its strings
        strings = re.compile(r"[fbr]?(\"[^\"]*\"|'[^']*')")
        return strings.sub("S", old[0]).strip() == strings.sub("S", new[0]).strip() or new[0].strip() == "None"
    return a == b  # equal but for string literals


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
                        help="hand-kept list: mutant (glob), tab, mutated line (or *), tab, why it cannot change a result")
    parser.add_argument("--out", type=Path, default=REPO / "tests/mutation-survivors.md",
                        help="where to write the one-line-per-survivor list")
    parser.add_argument("--show", type=int, default=20, help="print the diffs of this many unexplained survivors")
    args = parser.parse_args()

    modules = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    import os

    os.chdir(REPO)  # mutmut reads mutants/ relative to the working directory
    results = load(modules)
    hand = []  # (mutant glob, mutated line or "*", why)
    if args.equivalent.exists():
        for number, line in enumerate(args.equivalent.read_text().splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                fields = line.split("\t")
                if len(fields) != 3:
                    sys.exit(f"{args.equivalent}:{number}: expected mutant, tab, mutated line, tab, why")
                hand.append(tuple(f.strip() for f in fields))
    used, unchecked = set(), Counter()
    rows, unexplained, per_module = [], [], {m: Counter() for m in modules}
    for name, (module, status) in sorted(results.items()):
        per_module[module][status] += 1
        if status in KILLED:
            continue
        if status == "not checked":
            unchecked[module] += 1
            continue
        diff = get_diff_for_mutant(name, path=Path(module))
        mutated = " ".join(l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++"))
        entry = next((e for e in hand if fnmatch.fnmatchcase(name, e[0]) and e[1] in ("*", mutated)), None)
        if entry:
            used.add(entry)
            why = entry[2]
            rows.append((module, name, status, "by hand", why, mutated))
        elif status == "survived" and message_only(diff):
            rows.append((module, name, status, "message", "changes only the text of a message", mutated))
        else:
            unexplained.append((module, name, status, diff))
    stale = [e for e in hand if e not in used]
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
    if unchecked:
        print("not checked yet (run scripts/mutation.sh again): "
              + ", ".join(f"{m} {n}" for m, n in unchecked.items()))
    lines = ["# Surviving mutants of the core modules", "",
             "Generated by `scripts/mutation_report.py` after `scripts/mutation.sh`; one line per mutant",
             "that the fast tests do not kill, with why it cannot change any result.", "",
             f"Score: {killed} of {n} mutants killed ({100 * killed / max(n, 1):.1f} %)"
             + (f"; not checked yet: {sum(unchecked.values())} ({', '.join(f'{m} {c}' for m, c in unchecked.items())})"
                if unchecked else "") + ".", ""]
    shorten = lambda text: text if len(text) <= 90 else text[:87] + "..."  # noqa: E731
    lines += [f"- `{name}` ({status}, {kind}): {why} — `{shorten(mutated)}`" for _, name, status, kind, why, mutated in rows]
    lines += [f"- `{name}` ({status}): **unexplained**" for _, name, status, _ in unexplained]
    # a module none of whose mutants is checked in this mutants/ (a run limited to other modules,
    # or a fresh one) keeps its lines from the previous list
    idle = {m.removesuffix(".py").replace("/", ".") for m, counts in per_module.items()
            if sum(counts.values()) == counts["not checked"]}
    if args.out.exists():
        lines += [line for line in args.out.read_text().splitlines()
                  if line.startswith("- `") and line[3:].split(".x")[0] in idle]
    args.out.write_text("\n".join(lines) + "\n")
    for _, name, status, diff in unexplained[: args.show]:
        print(f"\n## {name} ({status})\n" + "\n".join(l for l in diff.splitlines() if l[:1] in "+-"))
    if stale and not unchecked:  # a line may wait for a mutant not checked yet
        print(f"\n{len(stale)} lines of {args.equivalent.name} match no survivor (remove them):")
        print("\n".join("\t".join(e) for e in stale))
    return 1 if unexplained or unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
