"""The paper's benchmarks (benchmarks/*.yaml; mcq.py for the multiple-choice ones, mathvista.py): the metrics
on hand-made predictions (right, wrong, badly formatted, letter vs option text), and each task
run through lm-eval end to end on a tiny model over a fixture in the dataset's own schema."""

import io
import json
import math
import sys

import pytest
from PIL import Image

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import mathvista  # noqa: E402
import mcq  # noqa: E402


@pytest.mark.parametrize("response, letter", [
    ("B", "B"), ("B.", "B"), ("(C) a dog", "C"), ("The answer is D.", "D"), ("D\n", "D"),
    ("A cat is shown. Answer: C", "A"),  # a leading letter wins, as in lmms-eval
    ("I think it is (B)", "B"), ("answer: c", ""), ("none of them", ""), ("", "")])
def test_the_letter_extraction_follows_lmms_eval(response, letter):
    assert mcq.extract_letter(response) == letter


def test_ai2d_letters_options_and_scores_a_leading_letter_or_the_whole_answer():
    doc = {"question": "Which organ?", "options": ["heart", "lung", "liver"], "answer": "1"}
    assert mcq.ai2d_doc_to_text(doc) == ("<image>Which organ?\nA. heart\nB. lung\nC. liver\n"
                                         "Answer with the option's letter from the given choices directly.")
    assert mcq.ai2d_doc_to_target(doc) == "B"
    score = lambda r: mcq.ai2d_process_results(doc, [r])["exact_match"]  # noqa: E731
    # lm-eval's exact_match keeps whitespace: " B" is wrong there, " B." is its letter (lmms-eval's filter)
    assert [score(r) for r in ("B", "b.", "B. lung", " B.", "B!", " B", "A", "lung", "B) lung", "The answer is B")] == [
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_mmstar_is_a_macro_average_over_l2_categories():
    docs = [{"question": "Q? Options: A: x, B: y", "answer": "A", "l2_category": c} for c in ("p", "p", "p", "q")]
    items = [mcq.mmstar_process_results(d, [r])["average"] for d, r in zip(docs, ["A", "A", "B", "A"])]
    assert mcq.mmstar_aggregate(items) == pytest.approx((2 / 3 + 1) / 2)  # micro would be 0.75
    assert mcq.mmstar_doc_to_text({"question": " Q? Please answer yes or no."}) == (
        "<image>Q?\nAnswer with the option's letter from the given choices directly")


def test_seedbench_2_plus_takes_the_first_character_and_splits_by_image_type():
    doc = {"question": "Which?", "choice_A": "a", "choice_B": "pic.png", "choice_C": "c", "choice_D": "d",
           "answer": "B", "question_image_type": "map"}
    assert "\nB. <image>\n" in mcq.seed2plus_doc_to_text(doc)
    assert mcq.seed2plus_process_results(doc, [" B) pic"]) == {"all": 1.0, "chart": None, "map": 1.0, "web": None}
    assert mcq.seed2plus_process_results(doc, ["The answer is B"])["all"] == 0.0
    assert mcq.seed2plus_process_results(doc, ["b"])["all"] == 1.0  # case ignored, as lmms-eval
    assert mcq.mean_of_scored([1.0, None, 0.0, None, 1.0]) == pytest.approx(2 / 3)


def test_realworldqa_letters_and_free_answers():
    letter = {"question": "Which? A. x B. y", "answer": "B"}
    free = {"question": "How many cars?", "answer": "3"}
    assert mcq.realworldqa_process_results(letter, ["(B)"])["exact_match"] == 1.0
    assert mcq.realworldqa_process_results(letter, ["y"])["exact_match"] == 0.0  # option text is not its letter
    assert mcq.realworldqa_process_results(free, ["3."])["exact_match"] == 1.0
    assert mcq.realworldqa_process_results(free, ["three"])["exact_match"] == 0.0


def test_seedbench_keeps_image_items_and_scores_the_first_character_per_dimension():
    from datasets import Dataset

    kept = mcq.seed_image_items(Dataset.from_dict({"data_type": ["image", "video", "image"], "x": [1, 2, 3]}))
    assert kept["x"] == [1, 3]
    doc = {"question": "What?", "choice_a": "x", "choice_b": "y", "choice_c": "z", "choice_d": "w",
           "answer": "C", "question_type_id": 5}
    assert mcq.seed_doc_to_text(doc).endswith("C. z\nD. w\nAnswer with the option's letter from the given choices directly.")
    out = mcq.seed_process_results(doc, ["C. z"])
    assert out["seed_image"] == 1.0 and out["instances_counting"] == 1.0 and out["scene_understanding"] is None
    assert mcq.seed_process_results(doc, ["(C)"])["seed_image"] == 0.0  # first character only, as lmms-eval
    assert mcq.seed_process_results(doc, ["c"])["seed_image"] == 1.0


def test_mmmu_pro_parses_as_the_official_code_and_orders_images_by_reference():
    options = ["apple", "banana pie", "cherry", "date"]
    doc = {"id": "x1", "question": "Compare <image 2> with <image 1>", "options": str(options), "answer": "B",
           "image_1": "one", "image_2": "two"}
    assert mcq.mmmu_pro_standard_images({**doc, "options": "['<image 1>', 'b']"}) == ["two", "one", "one"]
    text = mcq.mmmu_pro_standard_doc_to_text(doc)
    assert text.startswith("Compare <image> with <image>\nA. apple\nB. banana pie\n") and "<image 2>" not in text
    parse = lambda r: mcq.mmmu_parse(r, options, seed="x1")  # noqa: E731
    assert parse("Let me think. Answer: B") == "B" and parse("(C)") == "C" and parse("B.") == "B"
    assert parse("I would say it is clearly the banana pie here") == "B"  # option text, > 5 words
    assert parse("A or (B)? Finally (D)") == "D"  # several: the last mentioned
    guess = parse("no idea")
    assert guess in "ABCD" and all(parse("no idea") == guess for _ in range(3))  # seeded by the item id
    assert mcq.mmmu_pro_process_results(doc, ["Answer: B"]) == {"acc": 1.0}
    assert mcq.mmmu_pro_vision_doc_to_text(doc).startswith("<image>Answer with the option letter")


def test_blink_reads_the_letter_as_lmms_eval_and_sends_every_image():
    doc = {"prompt": "Which is closer?\n(A) left\n(B) right", "choices": ["(A)", "(B)"], "answer": "(B)",
           "image_1": "i1", "image_2": "i2", "image_3": None, "image_4": None}
    assert mcq.blink_images(doc) == ["i1", "i2"]
    assert mcq.blink_doc_to_text(doc) == ("<image><image>Note: You only need to respond with A, B without providing"
                                          " any additional information.\nWhich is closer?\n(A) left\n(B) right")
    score = lambda r: mcq.blink_process_results(doc, [r])["acc"]  # noqa: E731
    assert [score(r) for r in ("B", "(B)", "b.", " B) right", "A", "The answer is (B)", "Answer: B", "I pick (B)",
                               "C", "B is wrong, the answer is A", "Answer: a")] == [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0]
    assert mcq.blink_letter("C", "AB") == "" and mcq.blink_letter("Answer: B", "ABCD") == "B"  # not the A of "Answer"


def test_a_subsets_benchmark_is_one_task_per_dataset_config():
    from masters.evaluation import Benchmark, subtask_names, task_spec

    spec = task_spec(Benchmark("blink", str(REPO / "benchmarks/blink.yaml"), metric="acc,none"))
    assert len(spec) == 14 and spec[0]["task"] == "blink_Art_Style" and spec[0]["dataset_name"] == "Art_Style"
    assert "subsets" not in spec[0] and subtask_names(spec)[-1] == "blink_Visual_Similarity"
    assert subtask_names(task_spec(Benchmark("ai2d", str(REPO / "benchmarks/ai2d.yaml")))) is None


def _png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_mmbench_prompt_is_lmms_evals():
    doc = {"question": "Which one is the correct caption of this image?", "hint": None, "A": "A cat", "B": "A dog",
           "C": "A bird", "D": float("nan")}
    assert mcq.mmbench_doc_to_text(doc) == (
        "<image>Which one is the correct caption of this image? There are several options:\nA. A cat\nB. A dog\n"
        "C. A bird\n\nAnswer with the option's letter from the given choices directly.")
    assert mcq.mmbench_doc_to_text({**doc, "hint": "The passage says X."}).startswith(
        "<image>The passage says X. Which one is the correct caption")
    assert "D." not in mcq.mmbench_doc_to_text({**doc, "D": "nan"})
    assert mcq.mmbench_cn_doc_to_text(doc) == (  # MMBench-CN: lmms-eval's Chinese title and instruction
        "<image>Which one is the correct caption of this image? 有如下几个选项：\nA. A cat\nB. A dog\nC. A bird\n\n"
        "请直接使用所提供的选项字母作为答案回答。")


@pytest.mark.parametrize("response, letter", [
    ("B", "B"), ("B.", "B"), ("Answer: B", "B"), ("The answer is B", "B"), ("The answer is (B).", "B"),
    ("(B) A dog", "A"),  # MMBench's rule reads the bare "A" (a quirk the reference has too)
    ("A dog", "A"), ("a dog is shown", "B"), ("I think A is wrong, B", ""), ("E", "E")])
def test_mmbench_rule_reads_the_option_as_the_reference_does(response, letter):
    options = {"A": "A cat", "B": "A dog", "C": "A bird"}
    assert (mcq.mmbench_infer_option(response) or mcq.mmbench_infer_text(response, options)) == letter


def test_mmbench_circular_eval_needs_every_rotation_right():
    def row(index, answer, response, l2="Coarse Perception"):
        doc = {"index": index, "answer": answer, "question": "q", "A": "x", "B": "y", "C": "z", "D": None,
               "L2-category": l2}
        return mcq.mmbench_process_results(doc, [response])["circular"]

    rows = [row(1, "A", "A"), row(1_000_001, "B", "B"), row(2_000_001, "C", "C"),  # all three rotations right
            row(2, "B", "B"), row(1_000_002, "C", "A"),  # one rotation wrong
            row(3, "C", "I pick C", "Logic Reasoning")]  # no rotation, read by the priority extraction
    assert mcq.mmbench_circular(rows) == pytest.approx(2 / 3)  # per row it would be 5 / 6
    assert mcq.mmbench_coarse_perception(rows) == pytest.approx(1 / 2)
    assert mcq.mmbench_logic_reasoning(rows) == 1.0
    assert math.isnan(mcq.mmbench_relation_reasoning(rows))


MC = {"question": "What fraction of the shape is blue?", "choices": ["3/11", "8/11", "6/11", "3/5"], "unit": None,
      "precision": None, "answer": "8/11", "question_type": "multi_choice", "answer_type": "text"}
INTEGER = {"question": "what is the total volume of the measuring cup?", "choices": None, "unit": "g",
           "precision": None, "answer": "1000", "question_type": "free_form", "answer_type": "integer"}
FLOAT = {"question": "What is the fraction of females facing the camera?", "choices": None, "unit": "",
         "precision": 1.0, "answer": "0.6", "question_type": "free_form", "answer_type": "float"}  # float, as on the Hub


def test_mathvista_prompt_is_lmms_evals_format_prompt():
    assert mathvista.doc_to_text(MC) == ("<image>What fraction of the shape is blue?\nA. 3/11\nB. 8/11\nC. 6/11\n"
                                         "D. 3/5\nAnswer with the option's letter from the given choices directly.")
    assert mathvista.doc_to_text(INTEGER) == ("<image>what is the total volume of the measuring cup? (Unit: g)\n"
                                              "Answer the question using a single integer number.")
    assert mathvista.doc_to_text(FLOAT).endswith("\nAnswer the question using a single floating-point number with "
                                                 "one decimal place.")
    assert mathvista.doc_to_text({**FLOAT, "precision": 2.0}).endswith("with two decimal places.")
    assert mathvista.doc_to_text({**INTEGER, "answer_type": "list"}).endswith("using a Python list.")


@pytest.mark.parametrize("doc, response, right, extracted", [
    (MC, "B", 1, 1), (MC, "(B)", 1, 1), (MC, "The answer is B.", 1, 1), (MC, "8/11", 1, 1),
    (MC, "It is 8/11 of the shape", 1, 1),  # the one choice text the response contains
    (MC, "C", 0, 1), (MC, "no idea", 0, 0), (MC, "", 0, 0),
    (INTEGER, "1000", 1, 1), (INTEGER, "1000.0", 1, 1), (INTEGER, "1,000", 1, 1),
    (INTEGER, "The cup holds 1000 g in total.", 1, 1), (INTEGER, "From 0 to 500, so the answer is 1000", 1, 1),
    (INTEGER, "999", 0, 1), (INTEGER, "a lot", 0, 0),
    (FLOAT, "0.6", 1, 1), (FLOAT, "0.60", 1, 1), (FLOAT, ".6", 1, 1), (FLOAT, "0.58", 1, 1),  # rounded to 1 place
    (FLOAT, "6 of 10, i.e. 0.6", 1, 1), (FLOAT, "0.7", 0, 1),
    ({**INTEGER, "answer_type": "list", "answer": "[2007, 2008]"}, "between [2007, 2008]", 1, 1),
])
def test_mathvista_reads_and_normalizes_answers_as_the_official_scorer(doc, response, right, extracted):
    assert mathvista.process_results(doc, [response]) == {"acc": float(right), "extracted": float(extracted)}


def test_mathvista_normalization_maps_other_text_to_the_nearest_choice():
    assert mathvista.normalize("8/12", MC) == "8/11"  # edit distance 1
    assert mathvista.normalize("(c) six", MC) == "6/11"
    assert mathvista.normalize("x", {**INTEGER}) is None
    assert mathvista.normalize("0.56", {**FLOAT, "precision": 2.0}) == "0.56"


def _fixture(path, columns: dict, features: dict):
    """A parquet file written by `datasets` (its Image feature: what the Hub's parquet holds)."""
    from datasets import Dataset, Features, Image as HFImage, Sequence, Value

    kinds = {"image": HFImage(), "images": Sequence(HFImage()), "string": Value("string"),
             "strings": Sequence(Value("string")), "int": Value("int64"), "float": Value("float64")}
    Dataset.from_dict(columns, features=Features({k: kinds[v] for k, v in features.items()})).to_parquet(str(path))
    return str(path)


@pytest.mark.slow
def test_each_benchmark_runs_through_lm_eval_on_its_schema(tmp_path, tiny_model, processor):
    from masters.checkpoints import save_checkpoint
    from masters.evaluation import Benchmark, evaluate

    save_checkpoint(tiny_model, processor, tmp_path / "model")
    images = [_png(c) for c in ("red", "green", "blue")]
    data = {
        "ai2d": _fixture(tmp_path / "ai2d.parquet", {
            "question": ["q1", "q2", "q3"], "options": [["a", "b"], ["c", "d", "e"], ["f", "g"]],
            "answer": ["0", "2", "1"], "image": images},
            {"question": "string", "options": "strings", "answer": "string", "image": "image"}),
        "mmstar": _fixture(tmp_path / "mmstar.parquet", {
            "index": [0, 1, 2], "question": ["q? Options: A: x, B: y"] * 3, "answer": ["A", "B", "A"],
            "category": ["math"] * 3, "l2_category": ["geometry", "geometry", "statistical reasoning"],
            "meta_info": ["{}"] * 3, "image": images},
            {"index": "int", "question": "string", "answer": "string", "category": "string", "l2_category": "string",
             "meta_info": "string", "image": "image"}),
        "seedbench_2_plus": _fixture(tmp_path / "seed.parquet", {
            "question": ["q1", "q2", "q3"], **{f"choice_{c}": [c.lower()] * 3 for c in "ABCD"},
            "answer": ["A", "B", "C"], "question_image_type": ["chart", "map", "web"], "image": images},
            {"question": "string", **{f"choice_{c}": "string" for c in "ABCD"}, "answer": "string",
             "question_image_type": "string", "image": "image"}),
        "seedbench": _fixture(tmp_path / "seedbench.parquet", {
            "question": ["q1", "q2", "q3"], **{f"choice_{c}": [c] * 3 for c in "abcd"}, "answer": ["A", "B", "C"],
            "data_type": ["image", "video", "image"], "question_type_id": [1, 2, 9], "image": [[i] for i in images]},
            {"question": "string", **{f"choice_{c}": "string" for c in "abcd"}, "answer": "string",
             "data_type": "string", "question_type_id": "int", "image": "images"}),
        "mmmu_pro_standard": _fixture(tmp_path / "mmmu_pro_standard.parquet", {
            "id": ["a", "b", "c"], "question": ["<image 1> vs <image 2>?", "Which <image 1>?", "Plain?"],
            "options": [str(["x", "y"]), str(["<image 2>", "z"]), str(["p", "q", "r"])], "answer": ["A", "B", "C"],
            "image_1": images, "image_2": images[::-1], "subject": ["Art"] * 3},
            {"id": "string", "question": "string", "options": "string", "answer": "string", "image_1": "image",
             "image_2": "image", "subject": "string"}),
        "mmmu_pro_vision": _fixture(tmp_path / "mmmu_pro_vision.parquet", {
            "id": ["a", "b", "c"], "image": images, "options": [str(["x", "y"])] * 3, "answer": ["A", "B", "A"],
            "subject": ["Art"] * 3},
            {"id": "string", "image": "image", "options": "string", "answer": "string", "subject": "string"}),
        "blink": _fixture(tmp_path / "blink.parquet", {
            "idx": ["a", "b", "c"], "prompt": ["Which?\n(A) x\n(B) y"] * 3, "choices": [["(A)", "(B)"]] * 3,
            "answer": ["(A)", "(B)", "(A)"], "image_1": images, "image_2": [images[1], None, images[2]],
            "image_3": [None] * 3, "image_4": [None] * 3},
            {"idx": "string", "prompt": "string", "choices": "strings", "answer": "string", "image_1": "image",
             "image_2": "image", "image_3": "image", "image_4": "image"}),
        "mmbench": _fixture(tmp_path / "mmbench.parquet", {
            "index": [0, 1_000_000, 1], "question": ["q1", "q1", "q2"], "hint": ["h", "h", None],
            "A": ["x", "y", "p"], "B": ["y", "x", "q"], "C": [None] * 3, "D": [None] * 3, "answer": ["A", "B", "B"],
            "category": ["c"] * 3, "L2-category": ["Coarse Perception"] * 3, "image": images},
            {"index": "int", "question": "string", "hint": "string", **{c: "string" for c in "ABCD"},
             "answer": "string", "category": "string", "L2-category": "string", "image": "image"}),
        "mmbench_cn": _fixture(tmp_path / "mmbench_cn.parquet", {
            "index": [0, 1_000_000, 1], "question": ["问题一", "问题一", "问题二"], "hint": [None] * 3,
            "A": ["猫", "狗", "红"], "B": ["狗", "猫", "绿"], "C": [None] * 3, "D": [None] * 3, "answer": ["A", "B", "B"],
            "category": ["c"] * 3, "L2-category": ["Coarse Perception"] * 3, "image": images},
            {"index": "int", "question": "string", "hint": "string", **{c: "string" for c in "ABCD"},
             "answer": "string", "category": "string", "L2-category": "string", "image": "image"}),
        "mathvista": _fixture(tmp_path / "mathvista.parquet", {
            "pid": ["1", "2", "3"], **{k: [MC[k], INTEGER[k], FLOAT[k]] for k in MC}, "decoded_image": images},
            {"pid": "string", "question": "string", "choices": "strings", "unit": "string", "precision": "float",
             "answer": "string", "question_type": "string", "answer_type": "string", "decoded_image": "image"}),
        "realworldqa": _fixture(tmp_path / "rwqa.parquet", {
            "question": ["Which? A. x B. y", "How many?", "Colour?"], "answer": ["A", "2", "red"], "image": images},
            {"question": "string", "answer": "string", "image": "image"}),
    }
    metric = {"ai2d": "exact_match,none", "mmstar": "average,none", "seedbench_2_plus": "all,none",
              "seedbench": "seed_image,none", "mmmu_pro_standard": "acc,none", "mmmu_pro_vision": "acc,none",
              "blink": "acc,none", "realworldqa": "exact_match,none", "mmbench": "circular,none",
              "mmbench_cn": "circular,none", "mathvista": "acc,none"}
    benches = [Benchmark(name, str(REPO / f"benchmarks/{name}.yaml"), data=data[name], metric=metric[name])
               for name in data]
    summary = evaluate(tmp_path / "model", benches, batch_size=4, samples_path=tmp_path / "samples.jsonl")
    expected = {name: 3 for name in data} | {"seedbench": 2, "blink": 14 * 3}  # image items; 14 subsets
    assert summary["n"] == expected
    assert all(0.0 <= acc <= 100.0 for acc in summary["accuracy"].values())
    # every score lm-eval gave, per category too, is kept beside the table's one
    metrics = summary["metrics"]
    assert set(metrics["mmbench"]) == {"circular", *mcq.MMBENCH_L2} and metrics["mmbench"]["circular"] == summary[
        "accuracy"]["mmbench"] and metrics["mmbench"]["logic_reasoning"] is None  # no item of that category
    assert {"all", "chart", "map", "web"} <= set(metrics["seedbench_2_plus"])
    assert len([k for k in metrics["blink"] if k.endswith("/acc")]) == 14  # one per subset
    assert set(metrics["mathvista"]) == {"acc", "extracted"}
    prompts = (tmp_path / "samples.jsonl").read_text()
    assert "Answer with the option" in prompts and "q? Options: A: x, B: y" in prompts
    import json

    samples = [json.loads(line) for line in prompts.splitlines()]
    assert any("问题一 有如下几个选项：" in r["prompt"] for r in samples if r["benchmark"] == "mmbench_cn")
    first = next(r for r in samples if r["benchmark"] == "mmmu_pro_standard" and r["doc_id"] == 0)
    assert first["prompt"].count("<|vision_start|>") == 2 and " vs " in first["prompt"]  # two images sent


def test_the_tasks_lm_eval_ships_score_hand_made_answers_as_the_field_does():
    """ChartQA (lm-eval's chartqa: "Final Answer: x", 5 % numeric tolerance) and MMMU (its
    per-subject tasks: the MMMU parser): right, near, wrong and badly formatted answers."""
    from lm_eval.tasks.chartqa import utils as chartqa
    from lm_eval.tasks.mmmu import utils as mmmu

    relaxed = lambda pred, ref: chartqa.relaxed_accuracy([ref], [pred])  # noqa: E731
    assert relaxed("so... Final Answer: 102", "100") == {"relaxed_accuracy": 1.0}  # within 5 %
    assert relaxed("Final Answer: 110", "100") == {"relaxed_accuracy": 0.0}
    assert relaxed("102", "100") == {"relaxed_accuracy": 0.0}  # no "Final Answer:": not read
    assert relaxed("Final Answer: Yes.", "Yes") == {"relaxed_accuracy": 1.0}
    doc = {"question_type": "multiple-choice", "options": str(["cat", "dog", "bird"]), "answer": "B"}
    responses = ("B", "(B) dog", "I would say that it is a dog here.", "A", "(A) dog")
    assert [mmmu.process_results(doc, [r])["acc"] for r in responses] == [1.0, 1.0, 1.0, 0.0, 0.0]


def _mmmu_items(subject: str, n: int, right: bool) -> dict:
    """``n`` MMMU items of ``subject`` in the Hub schema: one-option multiple choice (any response
    reads as A: right) or open questions with an answer no response contains (wrong)."""
    return {
        "id": [f"validation_{subject}_{i}" for i in range(n)], "question": ["<image 1> Which?"] * n,
        "options": [str(["only"]) if right else "[]"] * n, "explanation": [""] * n, "image_1": [_png("red")] * n,
        "image_2": [None] * n, "img_type": ["['Paintings']"] * n, "answer": ["A" if right else "zq#never#qz"] * n,
        "topic_difficulty": ["Easy"] * n, "question_type": ["multiple-choice" if right else "open"] * n,
        "subfield": [subject] * n}


MMMU_FEATURES = {"id": "string", "question": "string", "options": "string", "explanation": "string",
                 "image_1": "image", "image_2": "image", "img_type": "string", "answer": "string",
                 "topic_difficulty": "string", "question_type": "string", "subfield": "string"}


@pytest.mark.slow
def test_the_tasks_lm_eval_ships_run_on_local_data_in_their_schema(tmp_path, tiny_model, processor):
    """chartqa and the group mmmu_val (30 subjects) read from local parquet in the Hub schema, as
    the benchmark_data rule fetches them (`fetch: true`): MMMU's score is lm-eval's group aggregate,
    the mean over subjects weighted by their sizes, i.e. the share of all its items answered right."""
    from masters.checkpoints import save_checkpoint
    from masters.evaluation import Benchmark, evaluate, registered_task, task_spec
    from masters.hub import benchmark_sources

    save_checkpoint(tiny_model, processor, tmp_path / "model")
    # ChartQA's prompt is ~600 tiny-tokenizer tokens + 512 to generate: more than the tiny model's 1,024
    # positions, and lm-eval's truncation of a multimodal prompt breaks (rotary positions: any length works)
    config = json.loads((tmp_path / "model/config.json").read_text())
    for part in (config, config.get("text_config", {})):
        part["max_position_embeddings"] = 4096
    (tmp_path / "model/config.json").write_text(json.dumps(config))
    images = [_png(c) for c in ("red", "green", "blue")]
    chartqa = _fixture(tmp_path / "chartqa.parquet", {
        "image": images, "query": ["How many?", "Which year?", "Max?"], "label": [["12"], ["2019"], ["Yes"]],
        "human_or_machine": [0, 1, 0]},
        {"image": "image", "query": "string", "label": "strings", "human_or_machine": "int"})
    # the layout `masters fetch-benchmark` writes: a file per subject, named as benchmark_sources says
    mmmu = tmp_path / "hub/benchmarks/mmmu_val"
    mmmu.mkdir(parents=True)
    _, split, parts, _ = benchmark_sources("mmmu_val")
    assert split == "validation" and len(parts) == 30 and ("art", "Art") in parts
    for stem, subject in parts:  # Art: 3 right items; every other subject 1 wrong one
        _fixture(mmmu / f"{stem}.parquet", _mmmu_items(subject, 3 if stem == "art" else 1, stem == "art"), MMMU_FEATURES)
    benches = [Benchmark("chartqa", "chartqa", data=chartqa, metric="relaxed_accuracy,none"),
               Benchmark("mmmu_val", "mmmu_val", data=str(mmmu), metric="acc,none")]
    summary = evaluate(tmp_path / "model", benches, batch_size=4)
    assert summary["n"] == {"chartqa": 3, "mmmu_val": 32}
    assert 0.0 <= summary["accuracy"]["chartqa"] <= 100.0
    assert summary["accuracy"]["mmmu_val"] == pytest.approx(100.0 * 3 / 32)  # by size; unweighted: 1/30
    assert summary["metrics"]["mmmu_val"]["art/acc"] == 100.0 and summary["metrics"]["mmmu_val"]["music/acc"] == 0.0
    assert registered_task("mmmu_val").weighted and not registered_task("chartqa").weighted
    (mmmu / "music.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="music.parquet"):
        task_spec(Benchmark("mmmu_val", "mmmu_val", data=str(mmmu)))


def test_a_group_lm_eval_loads_itself_is_read_under_its_own_name_with_its_subtasks_sizes(tmp_path, monkeypatch):
    """A benchmark named otherwise than the lm-eval group it runs (no `data`: lm-eval loads and
    aggregates it): its score is the group's entry, its size the sum over the nested subtasks."""
    import lm_eval

    from masters.evaluation import Benchmark, evaluate

    results = {"results": {"mmmu_val": {"acc,none": 0.25}, "mmmu_val_business": {"acc,none": 0.5},
                           "mmmu_val_accounting": {"acc,none": 0.5}, "mmmu_val_art": {"acc,none": 0.0}},
               "group_subtasks": {"mmmu_val": ["mmmu_val_business", "mmmu_val_art"],
                                  "mmmu_val_business": ["mmmu_val_accounting"]},
               "n-samples": {"mmmu_val_accounting": {"effective": 4}, "mmmu_val_art": {"effective": 3}}}
    asked = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: asked.append(kw["tasks"]) or results)
    (tmp_path / "config.json").write_text("{}")
    summary = evaluate(tmp_path, [Benchmark("mmmu", "mmmu_val", metric="acc,none")])
    assert asked == [["mmmu_val"]]
    assert summary["accuracy"] == {"mmmu": 25.0} and summary["n"] == {"mmmu": 7}
