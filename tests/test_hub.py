"""Hub snapshots and training datasets (masters/hub.py), offline: the Hub API and the download
are stand-ins that record their calls; the dataset conversion runs on parquet made here."""

import io
import json
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from masters import hub
from masters.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """repo_info resolves any revision to COMMIT; download writes `files` into local_dir."""

    def __init__(self, files):
        self.files, self.calls = files, []

    def repo_info(self, repo_id, revision, repo_type):
        self.calls.append(("repo_info", repo_id, revision, repo_type))
        return SimpleNamespace(sha=COMMIT)

    def download(self, repo_id, repo_type, revision, local_dir, allow_patterns):
        self.calls.append(("download", repo_id, revision, local_dir, tuple(allow_patterns)))
        for name in self.files:
            path = __import__("pathlib").Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)


def test_a_branch_is_resolved_once_and_fetched_at_its_commit(tmp_path, capsys):
    fake = FakeHub(["config.json", "model-00001-of-00002.safetensors", "tokenizer.json", ".cache/huggingface/x"])
    out = tmp_path / "hub/Qwen2.5-VL-7B"
    manifest = hub.snapshot("Qwen/Qwen2.5-VL-7B-Instruct", "main", out, download=fake.download, api=fake)
    assert fake.calls[0] == ("repo_info", "Qwen/Qwen2.5-VL-7B-Instruct", "main", "model")
    kind, repo, revision, local_dir, patterns = fake.calls[1]
    assert revision == COMMIT and local_dir == str(out) + ".partial"  # fetched at the commit, via .partial
    assert patterns == tuple(hub.MODEL_FILES) and not any(p.endswith((".bin", ".py", ".pt")) for p in patterns)
    assert "not pinned" in capsys.readouterr().err
    recorded = json.loads((out / hub.MANIFEST).read_text())
    assert recorded == manifest and recorded["commit"] == COMMIT and recorded["revision"] == "main"
    assert recorded["files"] == ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json"]
    assert not (tmp_path / "hub/Qwen2.5-VL-7B.partial").exists()


def test_a_commit_is_pinned_and_not_warned_about(tmp_path, capsys):
    fake = FakeHub(["config.json", "model.safetensors"])
    hub.snapshot("a/b", COMMIT, tmp_path / "m", download=fake.download, api=fake)
    assert "not pinned" not in capsys.readouterr().err
    assert hub.is_pinned(COMMIT) and not hub.is_pinned("main") and not hub.is_pinned(COMMIT[:12])


def test_a_model_without_safetensors_is_refused_and_leaves_no_output(tmp_path):
    fake = FakeHub(["config.json", "tokenizer.json"])
    with pytest.raises(hub.HubError, match=r"a/b@0123.*no safetensors weights"):
        hub.snapshot("a/b", COMMIT, tmp_path / "m", download=fake.download, api=fake)
    assert not (tmp_path / "m").exists()


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def two_files(tmp_path):
    """A ChartQA-like file (image struct, query, label list, with ids) and one with raw image
    bytes and no id column."""
    first = tmp_path / "src/train-0.parquet"
    first.parent.mkdir()
    pq.write_table(pa.table({
        "qid": [7, 8],
        "image": [{"bytes": png("red"), "path": "a.png"}, {"bytes": png("blue"), "path": None}],
        "query": ["What colour?", "Which bar?"],
        "label": [["red"], ["12", "twelve"]]}), first)
    second = tmp_path / "src/train-1.parquet"
    pq.write_table(pa.table({"image": [png("green")], "query": ["Colour?"], "label": [["green"]]}), second)
    return first, second


def test_a_dataset_becomes_questions_with_unique_ids_and_first_answers(two_files, tmp_path):
    out = tmp_path / "datasets/chartqa.parquet"
    columns = {"image": "image", "question": "query", "answer": "label"}
    rows = hub.convert_dataset("chartqa", list(two_files), columns, out, batch_rows=1)
    frame = pd.read_parquet(out)
    assert rows == 3 and list(frame.columns) == ["id", "image", "question", "answer"]
    assert frame.id.tolist() == ["chartqa/0-0", "chartqa/0-1", "chartqa/1-0"]
    assert frame.answer.tolist() == ["red", "12", "green"] and frame.question.tolist()[1] == "Which bar?"
    assert Image.open(io.BytesIO(frame.image[2]["bytes"])).getpixel((0, 0)) == (0, 128, 0)
    with_id = hub.convert_dataset("c", [two_files[0]], {**columns, "id": "qid"}, tmp_path / "c.parquet")
    assert with_id == 2 and pd.read_parquet(tmp_path / "c.parquet").id.tolist() == ["c/7", "c/8"]


def test_a_missing_column_names_the_dataset_file_and_column(two_files, tmp_path):
    with pytest.raises(hub.HubError, match=r"datasets.d: .*train-0.parquet has no column\(s\) \['question'\]"):
        hub.convert_dataset("d", [two_files[0]], {"image": "image", "question": "question", "answer": "label"},
                            tmp_path / "d.parquet")
    assert not (tmp_path / "d.parquet").exists()
    with pytest.raises(hub.HubError, match=r"pattern 'nothing-\*.parquet' matches no file"):
        hub.dataset_files({"files": ["nothing-*.parquet"]}, two_files[0].parent)


def test_the_dataset_command_reads_local_files_into_the_question_schema(two_files, tmp_path):
    from masters.questions import draw_questions

    spec = {"files": [str(two_files[0].parent / "train-*.parquet")],
            "columns": {"image": "image", "question": "query", "answer": "label"}}
    out = tmp_path / "datasets/local.parquet"
    assert main(["dataset", "--name", "local", "--spec", json.dumps(spec), "--out", str(out)]) == 0
    questions = draw_questions([str(out)], None, 0)  # what the train_questions rule reads
    assert len(questions) == 3 and questions.id.is_unique


# ---------------------------------------------------------------- benchmark datasets


class RepoHub(FakeHub):
    """A dataset repository made of real files: download copies them (parquet, README)."""

    def __init__(self, root):
        super().__init__([])
        self.root = root

    def download(self, repo_id, repo_type, revision, local_dir, allow_patterns):
        import fnmatch
        import shutil

        self.calls.append(("download", repo_id, revision, local_dir, tuple(allow_patterns)))
        for path in self.root.rglob("*"):
            rel = str(path.relative_to(self.root))
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (__import__("pathlib").Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, __import__("pathlib").Path(local_dir) / rel)


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


def test_a_benchmark_with_configs_is_fetched_per_subset_at_its_commit(tmp_path, capsys):
    """A BLINK-like repository (README configs, a val and a test split per config): each subset's
    split becomes <subset>.parquet; the manifest names the commit; the evaluation's task spec
    points each subset's task at its file."""
    from masters.evaluation import Benchmark, task_spec

    repo = tmp_path / "repo"
    for config in ("Art", "Jigsaw"):
        _parquet(repo / config / "val-00000-of-00001.parquet", {"idx": [f"{config}_1", f"{config}_2"], "answer": ["(A)", "(B)"]})
        _parquet(repo / config / "test-00000-of-00001.parquet", {"idx": [f"{config}_t"], "answer": [""]})
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: val\n    path: {c}/val-*\n  - split: test\n    path: {c}/test-*\n"
        for c in ("Art", "Jigsaw")) + "---\n")
    task = tmp_path / "blink.yaml"
    task.write_text("task: blink\ndataset_path: BLINK-Benchmark/BLINK\ntest_split: val\nsubsets: [Art, Jigsaw]\n"
                    "output_type: generate_until\ndoc_to_text: idx\ndoc_to_target: answer\n")
    fake = RepoHub(repo)
    out = tmp_path / "hub/benchmarks/blink"
    manifest = hub.fetch_benchmark("blink", task, "main", out, allow_patterns=["README.md", "*/val-*"],
                                   download=fake.download, api=fake)
    assert "not pinned" in capsys.readouterr().err
    assert manifest["commit"] == COMMIT and manifest["rows"] == {"Art": 2, "Jigsaw": 2}
    assert json.loads((out / "manifest.json").read_text())["configs"] == {"Art": "Art", "Jigsaw": "Jigsaw"}
    assert fake.calls[1][2] == COMMIT and fake.calls[1][4] == ("README.md", "*/val-*")  # fetched at the commit
    assert sorted(p.name for p in out.iterdir()) == ["Art.parquet", "Jigsaw.parquet", "manifest.json"]
    assert pd.read_parquet(out / "Jigsaw.parquet")["idx"].tolist() == ["Jigsaw_1", "Jigsaw_2"]
    specs = task_spec(Benchmark("blink", str(task), data=str(out)))
    assert [(s["task"], s["dataset_kwargs"]["data_files"]) for s in specs] == [
        ("blink_Art", {"val": str((out / "Art.parquet").resolve())}),
        ("blink_Jigsaw", {"val": str((out / "Jigsaw.parquet").resolve())})]


def test_a_single_config_benchmark_by_file_layout_and_the_errors_that_name_the_problem(tmp_path):
    from masters.evaluation import Benchmark, task_spec

    repo = tmp_path / "repo"
    _parquet(repo / "data" / "testmini-00000-of-00001.parquet", {"pid": ["1", "2", "3"], "answer": ["a", "b", "c"]})
    task = tmp_path / "mathvista.yaml"
    task.write_text("task: m\ndataset_path: AI4Math/MathVista\ntest_split: testmini\n")
    out = tmp_path / "hub/benchmarks/mathvista"
    manifest = hub.fetch_benchmark("mathvista", task, COMMIT, out, download=RepoHub(repo).download, api=FakeHub([]))
    assert manifest["rows"] == {"data": 3} and (out / "data.parquet").is_file()
    assert task_spec(Benchmark("mathvista", str(task), data=str(out)))["dataset_kwargs"] == {
        "data_files": {"testmini": str((out / "data.parquet").resolve())}}
    (tmp_path / "other.yaml").write_text("task: m\ndataset_path: AI4Math/MathVista\ntest_split: test\n")
    with pytest.raises(hub.HubError, match="no split 'test'"):
        hub.fetch_benchmark("mathvista", tmp_path / "other.yaml", COMMIT, tmp_path / "o",
                            download=RepoHub(repo).download, api=FakeHub([]))
    (tmp_path / "local.yaml").write_text("task: m\ndataset_path: parquet\n")
    with pytest.raises(hub.HubError, match="not a Hub dataset"):
        hub.fetch_benchmark("x", tmp_path / "local.yaml", COMMIT, tmp_path / "p", download=None, api=None)
    with pytest.raises(FileNotFoundError, match="data.parquet"):
        task_spec(Benchmark("mathvista", str(task), data=str(tmp_path)))


def test_an_lm_eval_group_is_fetched_one_file_per_task_from_one_dataset(tmp_path, monkeypatch):
    """mmmu_val (lm-eval's group of 30 subjects, `fetch: true`): an MMMU-like repository (a dev,
    validation and test split per subject, the card's configs) gives one file per subject's
    validation split, named by the task; only the validation files are fetched. A group whose
    tasks read different splits is refused before anything is fetched."""
    from masters.evaluation import Benchmark, registered_task, task_spec

    subjects = [spec for _, spec in hub.benchmark_sources("mmmu_val")[2]]
    repo = tmp_path / "repo"
    for subject in subjects:
        for split in ("dev", "validation", "test"):
            _parquet(repo / subject / f"{split}-00000-of-00001.parquet", {"id": [f"{split}_{subject}_1"], "answer": ["A"]})
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {s}\n  data_files:\n" + "".join(f"  - split: {p}\n    path: {s}/{p}-*\n"
                                                        for p in ("dev", "validation", "test")) for s in subjects) + "---\n")
    fake = RepoHub(repo)
    out = tmp_path / "hub/benchmarks/mmmu_val"
    manifest = hub.fetch_benchmark("mmmu_val", "mmmu_val", COMMIT, out, allow_patterns=["README.md", "*/validation-*"],
                                   download=fake.download, api=fake)
    assert manifest["split"] == "validation" and manifest["repo_id"] == "MMMU/MMMU" and len(manifest["rows"]) == 30
    assert manifest["configs"]["art_theory"] == "Art_Theory" and set(manifest["rows"].values()) == {1}
    assert pd.read_parquet(out / "art_theory.parquet")["id"].tolist() == ["validation_Art_Theory_1"]
    specs = task_spec(Benchmark("mmmu_val", "mmmu_val", data=str(out)))
    assert len(specs) == 30 and {s["task"] for s in specs} == {f"mmmu_val_{stem}" for stem in registered_task("mmmu_val").leaves}
    assert all(s["dataset_kwargs"]["data_files"] == {"validation": str((out / f"{s['task'][9:]}.parquet").resolve())}
               and "dataset_name" not in s for s in specs)
    mixed = {"a": {"dataset_path": "x/y", "test_split": "test"}, "b": {"dataset_path": "x/y", "validation_split": "val"}}
    monkeypatch.setattr("masters.evaluation.task_parts", lambda bench: mixed)
    with pytest.raises(hub.HubError, match=r"several datasets, splits or revisions \[\"\('x/y', 'test', None\)\", \"\('x/y', 'val', None\)"):
        hub.fetch_benchmark("g", "g", COMMIT, tmp_path / "g", download=None, api=None)


def test_a_benchmark_is_fetched_at_the_commit_its_task_pins_unless_the_config_names_another(tmp_path, capsys):
    """The task YAML's `dataset_kwargs.revision` is the revision fetched when the config's benchmark
    entry names none (`--revision` absent); an entry's revision wins; no pin anywhere: main, warned.
    The fetch arguments the benchmark_data rule passes carry the entry's revision only."""
    from masters import specs

    pin = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "repo"
    _parquet(repo / "data" / "test-00000-of-00001.parquet", {"index": [1, 2], "answer": ["A", "B"]})
    pinned, unpinned = tmp_path / "pinned.yaml", tmp_path / "unpinned.yaml"
    pinned.write_text(f"task: p\ndataset_path: o/p\ndataset_kwargs: {{revision: {pin}}}\ntest_split: test\n")
    unpinned.write_text("task: u\ndataset_path: o/u\ntest_split: test\n")
    asked = []
    for task, revision in ((pinned, None), (pinned, "v2"), (unpinned, None)):
        fake = RepoHub(repo)
        manifest = hub.fetch_benchmark("b", task, revision, tmp_path / f"out{len(asked)}", download=fake.download, api=fake)
        asked.append((fake.calls[0][2], manifest["revision"], "not pinned" in capsys.readouterr().err))
    assert asked == [(pin, pin, False), ("v2", "v2", True), ("main", "main", True)]
    assert hub.benchmark_sources(pinned).revision == pin and hub.benchmark_sources(unpinned).revision is None
    design = SimpleNamespace(config={"benchmarks": {"p": {"task": "pinned.yaml"}, "q": {"task": "pinned.yaml", "revision": "v2"}}})
    # the task as configured (repo-relative): the job resolves it (no checkout path in its params)
    assert specs.fetch_benchmark_args(design, "p") == "--task pinned.yaml"
    assert specs.fetch_benchmark_args(design, "q") == "--task pinned.yaml --revision v2"
    (tmp_path / "mixed.yaml").write_text(f"task: m\ndataset_path: o/p\ndataset_kwargs: {{revision: {pin}}}\n"
                                         "test_split: test\nsubsets: [a, b]\n")
    assert hub.benchmark_sources(tmp_path / "mixed.yaml").revision == pin  # subsets share the pin


def test_a_commit_the_repository_lacks_stops_the_fetch_before_any_file(tmp_path):
    """A pinned commit the Hub does not know: the error of the revision lookup stops the fetch; no
    file is downloaded and nothing is left at OUT."""
    class Unknown(FakeHub):
        def repo_info(self, repo_id, revision, repo_type):
            raise LookupError(f"Revision Not Found: {repo_id}@{revision}")

    task = tmp_path / "t.yaml"
    task.write_text(f"task: t\ndataset_path: o/t\ndataset_kwargs: {{revision: {COMMIT}}}\ntest_split: test\n")
    fake = Unknown([])
    with pytest.raises(LookupError, match=f"o/t@{COMMIT}"):
        hub.fetch_benchmark("t", task, None, tmp_path / "out", download=fake.download, api=fake)
    assert fake.calls == [] and not (tmp_path / "out").exists()
