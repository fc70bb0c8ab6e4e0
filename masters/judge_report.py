"""How far the LLM judge can be trusted: for every response an LLM judge scored in this run,
the rule judge's score of the same response (METHOD.md §4, App. F.7). Per judge and response
source: parse failures (both App. D replies unparsable, scored 0), agreement with the rule
judge, and which way they disagree. From the judged files only (``tables/judges.{csv,md}``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from masters.columns import check_columns

COLUMNS = ["judge", "source", "responses", "parse_failed_pct", "agree_pct", "llm_1_rule_0_pct", "llm_0_rule_1_pct",
           "r_acc_llm", "r_acc_rule"]


def _pair(llm_path: str, rule_path: str) -> pd.DataFrame:
    llm, rule = pd.read_parquet(llm_path), pd.read_parquet(rule_path)
    check_columns(llm, ["text", "r_acc", "judge_parse_failed"], llm_path)
    check_columns(rule, ["text", "r_acc"], rule_path)
    if len(llm) != len(rule) or not llm["text"].reset_index(drop=True).equals(rule["text"].reset_index(drop=True)):
        raise ValueError(f"{llm_path} and {rule_path} judge different responses")
    return pd.DataFrame({"llm": llm["r_acc"].to_numpy(), "rule": rule["r_acc"].to_numpy(),
                         "failed": llm["judge_parse_failed"].to_numpy()})


def _summary(frame: pd.DataFrame) -> dict:
    pct = lambda mask: 100.0 * float(mask.mean()) if len(frame) else float("nan")  # noqa: E731
    return {"responses": len(frame), "parse_failed_pct": pct(frame["failed"]),
            "agree_pct": pct(frame["llm"] == frame["rule"]),
            "llm_1_rule_0_pct": pct((frame["llm"] == 1) & (frame["rule"] == 0)),
            "llm_0_rule_1_pct": pct((frame["llm"] == 0) & (frame["rule"] == 1)),
            "r_acc_llm": float(frame["llm"].mean()), "r_acc_rule": float(frame["rule"].mean())}


def judge_report(spec: dict) -> pd.DataFrame:
    """``spec``: ``{"pairs": [{"judge", "source", "llm": judged file, "rule": the rule judge's
    file of the same responses}, ...]}``; one row per judge and source, then per judge (``all``)."""
    frames = [_pair(p["llm"], p["rule"]).assign(judge=p["judge"], source=p["source"]) for p in spec["pairs"]]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    every = pd.concat(frames, ignore_index=True)
    rows = []
    for judge, by_judge in every.groupby("judge", sort=True):
        for source, group in by_judge.groupby("source", sort=True):
            rows.append({"judge": judge, "source": source, **_summary(group)})
        rows.append({"judge": judge, "source": "all", **_summary(by_judge)})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_judge_report(spec: dict, stem: str | Path) -> list[Path]:
    report = judge_report(spec)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    report.round(2).to_csv(stem.with_suffix(".csv"), index=False)
    caption = ("LLM judges vs the rule judge on the same responses (% of responses; r_acc: mean accuracy reward;"
               " a parse failure scores 0)")
    body = report.round(1).to_markdown(index=False) if len(report) else "(no LLM judge in this run)"
    stem.with_suffix(".md").write_text(f"{caption}\n\n{body}\n")
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]
