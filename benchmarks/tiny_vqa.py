"""Prompt of the tiny-world benchmarks (`doc_to_text: !function tiny_vqa.doc_to_text`): a Python
function rather than a Jinja template, which lm-eval compiles anew for every item."""


def doc_to_text(doc: dict) -> str:
    """The image placeholder, then the question (what `"<image>{{question}}"` renders)."""
    return "<image>" + doc["question"]
