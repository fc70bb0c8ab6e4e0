"""Judged benchmark scores: the LLM step of the benchmarks the reference harnesses score with GPT
(MM-Vet's grader; MathVista's answer extraction and MMBench's option matching where their rules
read nothing), run after the evaluation over its per-item samples.

A benchmark entry with ``judge: <module>.<NAME>`` names a *protocol*, a dict in a module beside
its task YAML (``benchmarks/mmvet.py: JUDGE``), with:

* ``request(doc, response, attempt)``: the judge conversation for one item, or None when the
  benchmark's rules settle it (``attempt`` counts the tries of an unreadable reply);
* ``read(reply, doc)``: the value a reply gives, or None (unreadable: asked again, up to
  ``tries`` times, then None stays: the protocol's score decides what it counts as);
* ``score(items)``: the metrics (fractions) from every item's ``doc``, ``response``, ``asked``
  and ``judged`` value; the entry's ``metric`` names the one in the table;
* ``prompt`` (its text is hashed into the record) and ``max_new_tokens``.

The judge is any chat backend of :func:`masters.judge.chat_backend`: a checkpoint on transformers
or vLLM, or an OpenAI-compatible endpoint (the references' GPT-4o). Its model and the prompt's
SHA-256 are written into the summary with the score; every reply goes to a JSONL beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from masters.judge import checked_replies

PROTOCOL_KEYS = ("request", "read", "score", "prompt", "max_new_tokens", "tries")


def load_protocol(task_yaml: str | Path, judge: str) -> dict[str, Any]:
    """The protocol ``judge`` (``module.NAME``) of the module beside ``task_yaml``."""
    module_name, _, attr = judge.partition(".")
    path = Path(task_yaml).parent / f"{module_name}.py"
    if not attr or not path.is_file():
        raise FileNotFoundError(f"judge {judge!r}: expected <module>.<NAME> with {path} beside the task YAML")
    spec = importlib.util.spec_from_file_location(f"_judged_{module_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    protocol = getattr(module, attr, None)
    missing = [k for k in PROTOCOL_KEYS if not isinstance(protocol, dict) or k not in protocol]
    if missing:
        raise ValueError(f"judge {judge!r}: {path} has no protocol dict {attr} with {', '.join(missing)}")
    return protocol


def read_samples(path: str | Path, benchmark: str) -> list[dict]:
    """The per-item records of ``benchmark`` in an evaluation's samples JSONL (with their docs)."""
    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row["benchmark"] == benchmark:
                if "doc" not in row:
                    raise KeyError(f"{path}: sample {row['doc_id']} of {benchmark!r} has no 'doc' (an evaluation "
                                   "from before judged benchmarks: evaluate again)")
                response = row["response"]
                row["response"] = str(response[0] if isinstance(response, list) else response)
                rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no samples of benchmark {benchmark!r}")
    return sorted(rows, key=lambda r: r["doc_id"])


def prompt_sha256(protocol: dict) -> str:
    return hashlib.sha256(protocol["prompt"].encode()).hexdigest()


def ask(protocol: dict, samples: list[dict], chat) -> list[dict]:
    """Judge every item that needs it: per try, each distinct pending conversation once, in one
    batch (greedy judging is a function of the conversation). Returns one record per sample:
    ``doc_id``, ``asked``, ``replies`` and the ``judged`` value (None: unreadable or not asked)."""
    records = [{"doc_id": s["doc_id"], "asked": False, "replies": [], "judged": None} for s in samples]
    pending = list(range(len(samples)))
    for attempt in range(int(protocol["tries"])):
        requests = {}
        for i in pending:
            messages = protocol["request"](samples[i]["doc"], samples[i]["response"], attempt)
            if messages is not None:
                requests[i] = messages
                records[i]["asked"] = True
        if not requests:
            break
        distinct = list(dict.fromkeys(json.dumps(m, sort_keys=True) for m in requests.values()))
        replies = dict(zip(distinct, checked_replies(chat, [json.loads(d) for d in distinct], protocol["max_new_tokens"])))
        pending = []
        for i, messages in requests.items():
            reply = replies[json.dumps(messages, sort_keys=True)]
            records[i]["replies"].append(reply)
            records[i]["judged"] = protocol["read"](reply, samples[i]["doc"])
            if records[i]["judged"] is None:
                pending.append(i)
    return records


def judge_benchmark(name: str, metric: str, protocol: dict, samples: list[dict], chat,
                    judge: dict) -> tuple[dict, list[dict]]:
    """The judged score of one benchmark: (its metrics and judge record, the per-item records).
    ``judge`` describes the judge (backend, model) for the record."""
    records = ask(protocol, samples, chat)
    items = [{"doc": s["doc"], "response": s["response"], **r} for s, r in zip(samples, records)]
    metrics = protocol["score"](items)
    main = metric.split(",")[0]
    if main not in metrics:
        raise KeyError(f"benchmark {name!r}: its judge protocol gives no {main!r} (it gives {sorted(metrics)})")
    asked = [r for r in records if r["asked"]]
    result = {
        "accuracy": 100.0 * metrics[main], "n": len(samples),
        "metrics": {k: (100.0 * v if not math.isnan(v) else None) for k, v in metrics.items()},
        "judge": {**judge, "prompt_sha256": prompt_sha256(protocol), "asked": len(asked),
                  "calls": sum(len(r["replies"]) for r in asked),
                  "unreadable": sum(r["judged"] is None for r in asked)},
    }
    return result, records
