"""Judged benchmarks (masters/benchmark_judge.py; the protocols in benchmarks/mmvet.py,
mathvista.py, mcq.py): the reference prompts, the reading of replies, who gets asked, retries,
the scores from hand-made judge replies, the OpenAI-compatible backend against a local server,
and MM-Vet end to end (lm-eval -> samples -> `masters judge-benchmark` -> the judged summary)."""

import hashlib
import http.server
import json
import math
import sys
import threading

import pytest

from masters.benchmark_judge import ask, judge_benchmark, load_protocol
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import mathvista  # noqa: E402
import mcq  # noqa: E402
import mmvet  # noqa: E402


class ScriptedJudge:
    """A chat backend whose reply to a conversation is ``reply(text)``; it records every call."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, prompts, max_new_tokens):
        self.calls.append([p[-1]["content"] for p in prompts])
        return [self.reply(p[-1]["content"]) for p in prompts]


def _sample(doc_id, doc, response):
    return {"doc_id": doc_id, "doc": doc, "response": response}


# ---------------------------------------------------------------- MM-Vet

VET = {"question": "What is x in the equation?", "answer": "-1<AND>-5", "capability": "ocr,math"}


def test_mmvet_grader_prompt_is_the_official_one():
    content = mmvet.grader_messages(VET, "x = -1", 0)[0]["content"]
    assert content.startswith("Compare the ground truth and prediction from AI models")
    assert "correctness score.\n\nQuestion | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n" in content
    assert content.endswith("| 1.0\n\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | ")
    retry = mmvet.grader_messages(VET, "x = -1", 1)[0]["content"]
    assert retry == content + "\nPredict the correctness of the answer (digit): "
    assert mmvet.doc_to_text(VET).endswith("step by step to provide best answer to the following question: \n\n"
                                           "What is x in the equation?")


def test_a_judge_that_returns_fewer_replies_than_requests_is_an_error_naming_both_counts():
    protocol = load_protocol(REPO / "benchmarks/mmvet.yaml", "mmvet.JUDGE")
    samples = [_sample(0, VET, "x = -1"), _sample(1, VET, "x = -5")]
    short = ScriptedJudge(lambda text: "1.0")
    short.generate = lambda prompts, n: ["1.0"] * (len(prompts) - 1)
    with pytest.raises(RuntimeError, match="returned 1 outputs for 2 prompts"):
        judge_benchmark("mmvet", "score,none", protocol, samples, short, {})


@pytest.mark.parametrize("reply, grade", [("0.5", 0.5), ("1.0\n", 1.0), ("0.0 totally wrong", 0.0), ("0", 0.0),
                                          ("1.5", None), ("-0.1", None), ("Correctness: 0.5", None), ("", None)])
def test_mmvet_reads_the_first_token_as_a_grade_in_0_1(reply, grade):
    assert mmvet.read_grade(reply, VET) == grade


def test_mmvet_retries_an_unreadable_grade_once_then_counts_it_zero():
    protocol = load_protocol(REPO / "benchmarks/mmvet.yaml", "mmvet.JUDGE")
    samples = [_sample(0, VET, "x = -1"), _sample(1, {**VET, "capability": "rec"}, "x = -1 or x = -5"),
               _sample(2, {**VET, "capability": ["rec", "ocr"]}, "no idea")]
    replies = {"x = -1 |": "0.5", "x = -5 |": "1.0"}  # "no idea" never gets a readable grade
    judge = ScriptedJudge(lambda text: next((v for k, v in replies.items() if k in text[len(mmvet.GRADER_PROMPT):]),
                                            "hmm"))
    result, records = judge_benchmark("mmvet", "score,none", protocol, samples, judge, {"model": "scripted"})
    assert [len(c) for c in judge.calls] == [3, 1]  # the second try asks only for the unreadable one
    assert judge.calls[1][0].endswith("(digit): ")
    assert [r["judged"] for r in records] == [0.5, 1.0, None]
    assert result["accuracy"] == pytest.approx(100 * 1.5 / 3)
    assert result["metrics"]["ocr"] == pytest.approx(100 * 0.5 / 2)  # items 0 and 2 (0.5 and 0)
    assert result["metrics"]["rec"] == pytest.approx(100 * 1.0 / 2)
    assert result["metrics"]["know"] is None  # no item needs it
    assert result["judge"] | {"prompt_sha256": None} == {
        "model": "scripted", "prompt_sha256": None, "asked": 3, "calls": 4, "unreadable": 1}
    assert result["judge"]["prompt_sha256"] == hashlib.sha256(mmvet.GRADER_PROMPT.encode()).hexdigest()


def test_identical_conversations_are_asked_once_per_try():
    protocol = load_protocol(REPO / "benchmarks/mmvet.yaml", "mmvet.JUDGE")
    judge = ScriptedJudge(lambda text: "1.0")
    records = ask(protocol, [_sample(i, VET, "x = -1 or x = -5") for i in range(4)], judge)
    assert [len(c) for c in judge.calls] == [1] and all(r["judged"] == 1.0 for r in records)


# ---------------------------------------------------------------- MathVista's extraction

MC = {"question": "What fraction of the shape is blue?", "choices": ["3/11", "8/11", "6/11", "3/5"], "unit": None,
      "precision": None, "answer": "8/11", "question_type": "multi_choice", "answer_type": "text",
      "query": "Hint: ... Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11"}
INTEGER = {"question": "How many?", "choices": None, "unit": None, "precision": None, "answer": "14",
           "question_type": "free_form", "answer_type": "integer", "query": "Question: How many?"}


def test_mathvista_extraction_prompt_is_lmms_evals():
    assert hashlib.sha256(mathvista.DEMO_PROMPT.strip().encode()).hexdigest().startswith("2c251ab9e219c5d7")
    content = mathvista.extraction_messages(INTEGER, "fourteen apples", 0)[0]["content"]
    assert content == f"{mathvista.DEMO_PROMPT.strip()}\n\nQuestion: How many?\n\nfourteen apples\n\nExtracted answer: "


def test_mathvista_asks_only_for_what_its_rules_cannot_read():
    protocol = load_protocol(REPO / "benchmarks/mathvista.yaml", "mathvista.JUDGE")
    samples = [_sample(0, MC, "B"), _sample(1, INTEGER, "fourteen apples"), _sample(2, MC, "the second one"),
               _sample(3, INTEGER, "15")]
    judge = ScriptedJudge(lambda text: {"fourteen apples": "14", "the second one": "B"}[text.split("\n\n")[-2]])
    result, records = judge_benchmark("mathvista", "acc,none", protocol, samples, judge, {})
    assert [r["asked"] for r in records] == [False, True, True, False]
    assert result["accuracy"] == pytest.approx(75.0)  # B, 14, B (the judge's) right; 15 wrong
    assert result["metrics"]["judged"] == pytest.approx(50.0)
    # without the judge the two unread responses count wrong: the rule-only score
    assert sum(mathvista.process_results(s["doc"], [s["response"]])["acc"] for s in samples) == 1


# ---------------------------------------------------------------- MMBench's matching

def _mmb(index, answer, a="a cat", b="a dog"):
    return {"index": index, "question": "Which animal", "hint": None, "A": a, "B": b, "C": None, "D": None,
            "answer": answer, "L2-category": "Coarse Perception"}


def test_mmbench_match_prompt_is_the_references():
    content = mcq.mmbench_match_messages(_mmb(0, "A"), "it barks", 0)[0]["content"]
    assert content.endswith("Example 3: \nQuestion: Which animal?\nOptions: There are several options: \n"
                            "A. a cat\nB. a dog\n\nAnswer: it barks\nYour output: ")
    assert mcq.mmbench_match_messages(_mmb(0, "A"), "B.", 0) is None  # the rule reads it


def test_mmbench_judge_fills_what_the_rule_cannot_read_then_circular_eval():
    protocol = load_protocol(REPO / "benchmarks/mmbench.yaml", "mcq.MMBENCH_JUDGE")
    samples = [_sample(0, _mmb(0, "B"), "it barks"), _sample(1, _mmb(1_000_000, "A", "a dog", "a cat"), "A"),
               _sample(2, _mmb(1, "A"), "purrs"), _sample(3, _mmb(2, "B"), "unsure"), _sample(4, _mmb(3, "B"), "hmm")]
    replies = {"it barks": "B", "purrs": "The answer is A.", "unsure": "E", "hmm": "I cannot tell"}
    judge = ScriptedJudge(lambda text: replies[text.split("Answer: ")[-1].split("\n")[0]])
    result, records = judge_benchmark("mmbench", "circular,none", protocol, samples, judge, {})
    assert [r["asked"] for r in records] == [True, False, True, True, True]
    # "E" is the reference's "no option fits" (an answer, wrong); a reply naming no letter is asked again
    assert [r["judged"] for r in records] == ["B", None, "A", "E", None]
    assert len(records[4]["replies"]) == 3 and [len(c) for c in judge.calls] == [4, 1, 1]
    fallback = __import__("random").Random(3).choice("ABCDE")  # the seeded random letter after 3 tries
    assert result["accuracy"] == pytest.approx(100 * (2 + (fallback == "B")) / 4)  # question 0: both copies right
    assert result["metrics"]["judged"] == pytest.approx(80.0)
    # the reference's quirk: a bare "A" among more than 3 words reads as the article, not an option
    assert mcq.mmbench_read_match("The answer is A", _mmb(0, "A")) is None


# ---------------------------------------------------------------- the OpenAI-compatible endpoint


@pytest.fixture()
def endpoint():
    """A local /v1/chat/completions server: grades "0.8", records each request."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"] + "-served",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "0.8"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


def test_the_endpoint_backend_sends_greedy_chat_requests_with_the_key_from_the_environment(endpoint, monkeypatch):
    from masters.generation import OpenAIChatBackend

    url, seen = endpoint
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    chat = OpenAIChatBackend("grader-1", base_url=url, api_key_env="JUDGE_KEY", workers=2)
    messages = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    assert chat.generate(messages, 3) == ["0.8"] * 3
    assert sorted(r["body"]["messages"][0]["content"] for r in seen) == ["q0", "q1", "q2"]
    assert {(r["path"], r["auth"], r["body"]["model"], r["body"]["temperature"], r["body"]["max_tokens"])
            for r in seen} == {("/v1/chat/completions", "Bearer sk-test", "grader-1", 0.0, 3)}
    assert chat.served == {"grader-1-served"}
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(RuntimeError, match=r"\$JUDGE_KEY"):
        OpenAIChatBackend("grader-1", base_url=url, api_key_env="JUDGE_KEY")


def test_a_request_that_keeps_failing_is_an_empty_reply_and_counted_unless_all_fail():
    """After the client's retries, one failing request does not lose the other replies: it is an
    empty (unreadable) reply, counted in ``failed``; all of them failing is an error."""
    from types import SimpleNamespace

    from masters.generation import OpenAIChatBackend

    class Completions:
        def create(self, model, messages, temperature, max_tokens):
            if "bad" in messages[0]["content"]:
                raise ValueError("400: content filter")
            return SimpleNamespace(model=model, choices=[SimpleNamespace(message=SimpleNamespace(content="1"))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=Completions()))
    chat = OpenAIChatBackend("grader", api_key_env=None, client=client, workers=2)
    prompts = [[{"role": "user", "content": c}] for c in ("ok", "bad", "ok")]
    assert chat.generate(prompts, 3) == ["1", "", "1"] and chat.failed == 1
    with pytest.raises(RuntimeError, match="all 2 requests to grader failed.*content filter"):
        chat.generate(prompts[1:2] * 2, 3)


def test_mmvet_end_to_end_through_lm_eval_and_the_judge(tmp_path, tiny_model, processor, endpoint, monkeypatch):
    """The paper's path: the dataset fetched from a (stand-in) Hub at a commit; the evaluate step
    reads it offline and writes the responses with their docs (NaN score: no rule grades MM-Vet);
    `masters judge-benchmark` grades them through the endpoint and writes what the tables read."""
    from masters.checkpoints import save_checkpoint
    from masters.cli import main
    from masters.evaluation import Benchmark, evaluate
    from masters.hub import fetch_benchmark
    from masters.tables import accuracy_table, write_results
    from tests.test_benchmarks import _fixture, _png
    from tests.test_hub import COMMIT, FakeHub, RepoHub

    url, seen = endpoint
    save_checkpoint(tiny_model, processor, tmp_path / "model")
    (tmp_path / "repo/data").mkdir(parents=True)
    _fixture(tmp_path / "repo/data/test-00000-of-00001.parquet", {
        "question_id": ["v1_0", "v1_1"], "question": ["What is x?", "Explain."], "answer": ["-1<AND>-5", "a meme"],
        "capability": ["ocr,math", "rec,know,gen"], "image": [_png("red"), _png("blue")]},
        {"question_id": "string", "question": "string", "answer": "string", "capability": "string", "image": "image"})
    data = tmp_path / "hub/benchmarks/mmvet"
    manifest = fetch_benchmark("mmvet", REPO / "benchmarks/mmvet.yaml", COMMIT, data,
                               download=RepoHub(tmp_path / "repo").download, api=FakeHub([]))
    assert manifest["repo_id"] == "lmms-lab-encoder/MMVet" and manifest["rows"] == {"data": 2}
    bench = Benchmark("mmvet", str(REPO / "benchmarks/mmvet.yaml"), data=str(data), metric="score,none",
                      judge="mmvet.JUDGE")
    summary = evaluate(tmp_path / "model", [bench], batch_size=2, samples_path=tmp_path / "samples.jsonl")
    assert summary["n"] == {"mmvet": 2} and math.isnan(summary["accuracy"]["mmvet"])
    assert summary["metrics"] == {"mmvet": {"score": None}}  # no score without the judge
    write_results(summary, "tiny", out_dir=tmp_path / "eval")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-e2e")
    main(["judge-benchmark", "--benchmark", json.dumps(bench.__dict__), "--evaluation", str(tmp_path / "eval/mmvet.json"),
          "--samples", str(tmp_path / "samples.jsonl"), "--backend", "openai", "--judge-model", "grader-1",
          "--base-url", url, "--items", str(tmp_path / "eval/mmvet.judged.jsonl"),
          "--out", str(tmp_path / "eval/mmvet.judged.json")])
    judged = json.loads((tmp_path / "eval/mmvet.judged.json").read_text())
    assert judged["accuracy"] == {"mmvet": pytest.approx(80.0)} and judged["label"] == "tiny"
    assert judged["judge"]["model"] == "grader-1" and judged["judge"]["served"] == ["grader-1-served"]
    assert judged["metrics"]["math"] == pytest.approx(80.0) and judged["metrics"]["spat"] is None
    questions = sorted(r["body"]["messages"][0]["content"].rsplit("\n", 1)[-1].split(" | ")[0] for r in seen)
    assert questions == ["Explain.", "What is x?"]  # each item graded with its own question
    assert accuracy_table([tmp_path / "eval/mmvet.judged.json"]).loc["tiny", "mmvet"] == pytest.approx(80.0)


# ---------------------------------------------------------------- the workflow's view


def _design(benchmark_judge, **entry):
    import copy

    import yaml

    from masters.experiments import Design

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["benchmarks"] = {**config["benchmarks"], "mmvet": {"task": "benchmarks/mmvet.yaml", "metric": "score,none",
                                                              "judge": "mmvet.JUDGE", **entry}}
    config["benchmark_judge"] = copy.deepcopy(benchmark_judge)
    return Design(config)


def test_tables_read_a_judged_benchmarks_judged_summary():
    design = _design({"backend": "openai", "model": "gpt-4o-2024-11-20"})
    assert design.evaluation("models/S", "mmvet") == f"{design.results}/eval/models/S/mmvet.judged.json"
    assert design.evaluation("models/S", "tiny_colour") == f"{design.results}/eval/models/S/tiny_colour.json"


@pytest.mark.parametrize("judge, entry, error", [
    ({"backend": "openai"}, {}, r"benchmark_judge\.model: benchmarks \['mmvet'\] are judged"),
    ({"backend": "hf", "model": "XL"}, {}, r"benchmark_judge\.model: 'XL' is not in `models`"),
    ({"backend": "openai", "model": "gpt-4o"}, {"task": "chartqa"}, r"benchmarks\.mmvet\.judge: .* task YAML"),
    ({"backend": "openai", "model": "gpt-4o"}, {"judge": "JUDGE"}, r"benchmarks"),  # the schema: <module>.<NAME>
])
def test_a_judged_benchmark_without_a_usable_judge_is_refused_before_any_job(judge, entry, error):
    from masters.experiments import DesignError

    with pytest.raises(DesignError, match=error):
        _design(judge, **entry)


def test_a_protocol_must_exist_beside_the_task_and_have_every_part(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_protocol(REPO / "benchmarks/mmvet.yaml", "nope.JUDGE")
    (tmp_path / "half.py").write_text("JUDGE = {'request': None, 'read': None}\n")
    with pytest.raises(ValueError, match="score, prompt, max_new_tokens, tries"):
        load_protocol(tmp_path / "task.yaml", "half.JUDGE")
