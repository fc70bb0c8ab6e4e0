"""Distillation reward and advantages (METHOD.md §5, §6; Eq. 4, 7)."""

from __future__ import annotations

import math

import pytest
import torch

from masters.rewards import (
    check_same_tokenizer,
    distill_reward,
    group_advantages,
    token_jsd,
)

torch.set_num_threads(1)
LN2 = math.log(2)


def direct_jsd(t: torch.Tensor, s: torch.Tensor, vocab: int) -> torch.Tensor:
    """JSD per position, float64, straight from the definition."""
    p = torch.softmax(t[..., :vocab].double(), -1)
    q = torch.softmax(s[..., :vocab].double(), -1)
    m = 0.5 * (p + q)
    return 0.5 * torch.xlogy(p, p / m).sum(-1) + 0.5 * torch.xlogy(q, q / m).sum(-1)


def test_jsd_matches_float64_with_padding_cut():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 5, 160, generator=g) * 3
    s = torch.randn(2, 5, 128, generator=g) * 3
    t[..., 120:] = 1e4  # padding logits: must be cut before the softmax
    s[..., 120:] = -1e4
    out = token_jsd(t, s, vocab_size=120)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), direct_jsd(t, s, 120), atol=1e-5, rtol=0)
    # default vocab_size is min(V_t, V_s)
    torch.testing.assert_close(token_jsd(t, s).double(), direct_jsd(t, s, 128), atol=1e-5, rtol=0)


def test_jsd_identical_is_zero_and_bounded():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 64, generator=g) * 5
    assert token_jsd(x, x.clone()).abs().max().item() < 1e-6
    # disjoint near-one-hot distributions approach ln 2
    a = torch.full((3, 64), -1e3)
    b = torch.full((3, 64), -1e3)
    a[:, 0] = 0
    b[:, 1] = 0
    far = token_jsd(a, b)
    assert torch.allclose(far, torch.full_like(far, LN2), atol=1e-5)
    rnd = token_jsd(torch.randn(50, 64, generator=g) * 10, torch.randn(50, 64, generator=g) * 10)
    assert (rnd <= LN2 + 1e-6).all() and (rnd >= -1e-6).all()


def test_jsd_bf16_and_minus_inf_logits():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(4, 32, generator=g)
    s = torch.randn(4, 32, generator=g)
    t[:, 5] = float("-inf")
    out = token_jsd(t, s)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), direct_jsd(t.clamp_min(-1e9), s, 32), atol=1e-5, rtol=0)
    assert token_jsd(t.bfloat16(), s.bfloat16()).dtype == torch.float32
    s.requires_grad_(True)  # the autograd path handles -inf too
    out_grad = token_jsd(t, s)
    out_grad.sum().backward()
    assert torch.equal(out_grad.detach(), out) and torch.isfinite(s.grad).all()


def test_jsd_chunking_identical():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(3, 37, 90, generator=g) * 2
    s = torch.randn(3, 37, 80, generator=g) * 2
    ref = token_jsd(t, s, chunk_size=10_000)
    for cs in (1, 5, 16, 37, 111, 256):
        assert torch.equal(token_jsd(t, s, chunk_size=cs), ref)



def test_jsd_under_autograd_keeps_the_inputs_not_every_chunks_intermediates():
    """With gradients, each chunk is recomputed in the backward (activation checkpointing): what the
    forward keeps for it is the chunk's inputs, not its ~6 float32 [chunk, V] intermediates, which
    summed over the chunks would be T x V again. Values and gradients equal the one-chunk ones."""
    g = torch.Generator().manual_seed(8)
    t = torch.randn(64, 500, generator=g)
    s = torch.randn(64, 500, generator=g, requires_grad=True)

    def kept(chunk_size):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
            out = token_jsd(t, s, chunk_size=chunk_size)
        s.grad = None
        out.sum().backward()
        return sum(saved), out.detach(), s.grad.clone()

    whole, out_whole, grad_whole = kept(64)  # one chunk: plain autograd
    chunked, out_chunked, grad_chunked = kept(8)
    assert whole >= 4 * 64 * 500  # log-probabilities and their products, [64, 500] each
    assert chunked <= 2 * 64 * 500  # the chunks' inputs (views of t and s) only
    torch.testing.assert_close(out_chunked, out_whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_chunked, grad_whole, atol=1e-7, rtol=0)

def test_jsd_gradient_flows_to_student():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(2, 6, 40, generator=g)
    s = torch.randn(2, 6, 40, generator=g, requires_grad=True)
    out = token_jsd(t, s, chunk_size=4)
    with torch.no_grad():  # the in-place no-grad path computes the same values
        assert torch.equal(token_jsd(t, s, chunk_size=4), out.detach())
    out.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # matches autograd through the float64 direct formula
    s64 = s.detach().double().requires_grad_(True)
    direct_jsd(t, s64, 40).sum().backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, atol=1e-5, rtol=0)


def test_jsd_errors():
    with pytest.raises(ValueError):
        token_jsd(torch.zeros(2, 3, 10), torch.zeros(2, 4, 10))
    with pytest.raises(ValueError):
        token_jsd(torch.zeros(3, 10), torch.zeros(3, 8), vocab_size=9)


def test_distill_reward_normalized():
    r = distill_reward([0.3, 0.1, 0.5, 0.2])
    assert r[2] == 0.0 and r[1] == 1.0
    assert r == pytest.approx([0.5, 1.0, 0.0, 0.75])
    assert distill_reward([0.2, 0.2, 0.2]) == [1.0, 1.0, 1.0]
    assert distill_reward([0.2, 0.2 + 1e-14]) == [1.0, 1.0]
    assert distill_reward([0.0, 1e-12]) == [1.0, 0.0]  # a spread of exactly 1e-12 is not flat
    assert distill_reward([0.4]) == [1.0]
    assert distill_reward(torch.tensor([0.5, 0.1])) == pytest.approx([0.0, 1.0])
    assert distill_reward(torch.tensor([[0.3, 0.1, 0.5]])) == pytest.approx([0.5, 1.0, 0.0])  # any shape: flat
    assert distill_reward([]) == []


def test_distill_reward_raw():
    r = distill_reward([0.0, LN2, LN2 / 2], normalize=False)
    assert r == pytest.approx([1.0, 0.0, 0.5])
    assert distill_reward([0.4], normalize=False) == pytest.approx([1 - 0.4 / LN2])


def test_group_advantages():
    a = group_advantages([1.0, 2.0, 3.0])  # mean 2, Bessel std 1
    assert a == pytest.approx([-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6)])
    b = group_advantages([0.0, 1.0])  # std = sqrt(0.5)
    s = math.sqrt(0.5)
    assert b == pytest.approx([-0.5 / (s + 1e-6), 0.5 / (s + 1e-6)])
    assert group_advantages([3.0]) == [0.0]
    assert group_advantages([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]
    assert sum(group_advantages([0.1, 0.7, 1.9, 1.2])) == pytest.approx(0.0, abs=1e-12)


class _Tok:
    def __init__(self, name, vocab):
        self.name_or_path = name
        self._vocab = vocab

    def get_vocab(self):
        return dict(self._vocab)


def test_check_same_tokenizer():
    v = {"<pad>": 0, "a": 1, "b": 2, "c": 3}
    check_same_tokenizer(_Tok("teacher", v), _Tok("student", dict(v)))
    with pytest.raises(ValueError, match=r"teacher.*student.*'b'"):
        check_same_tokenizer(_Tok("teacher", v), _Tok("student", {"<pad>": 0, "a": 1, "b": 3, "c": 2}))
    with pytest.raises(ValueError, match=r"'d'"):
        check_same_tokenizer(_Tok("teacher", v), _Tok("student", {**v, "d": 4}))



def test_tokenizer_mismatch_message_without_names_and_in_id_order():
    """Vocab dicts have no name: the message says tokenizer A / B; the first differing token is
    the one with the lowest id in A ('z', id 0), not the first in alphabetical order ('a')."""
    with pytest.raises(ValueError, match=r"^tokenizers differ: 'tokenizer A' and 'tokenizer B'; first differing "
                                         r"token 'z': id 0 in 'tokenizer A', 7 in 'tokenizer B'"):
        check_same_tokenizer({"z": 0, "a": 1}, {"z": 7, "a": 8})
    # tokens only B has: the first is the one with the lowest id in B ('y', id 2), not 'b'
    with pytest.raises(ValueError, match=r"first differing token 'y': missing in 'tokenizer A', id 2 in 'tokenizer B'"):
        check_same_tokenizer({"z": 0, "a": 1}, {"z": 0, "a": 1, "y": 2, "b": 3})


def test_a_processor_is_read_through_its_tokenizer_unless_it_has_a_vocabulary():
    class Processor:  # a processor wraps its tokenizer
        tokenizer = _Tok("inner", {"a": 0})

    class Both(_Tok):  # an object with a vocabulary of its own and a `tokenizer` attribute
        tokenizer = _Tok("inner", {"a": 0})

    check_same_tokenizer(Processor(), {"a": 0})
    check_same_tokenizer(Both("outer", {"b": 0}), {"b": 0})  # its own vocabulary, not the inner one
    with pytest.raises(ValueError, match="first differing token 'b'"):
        check_same_tokenizer(Both("outer", {"b": 0}), {"a": 0})


def test_token_jsd_shapes_bounds_and_chunking():
    """Found by mutation testing: one position ([V] logits), a one-token vocabulary, two chunks,
    an empty batch keeps its shape, dtype and device; bad sizes name the argument."""
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(4, 9, generator=g), torch.randn(4, 11, generator=g)
    whole = token_jsd(t, s, vocab_size=9)
    torch.testing.assert_close(token_jsd(t, s, vocab_size=9, chunk_size=2), whole)  # exactly two chunks
    torch.testing.assert_close(whole, direct_jsd(t, s, 9).float(), atol=1e-6, rtol=1e-5)
    one = token_jsd(t[1], s[1], vocab_size=9)
    assert one.shape == () and one.item() == pytest.approx(whole[1].item(), abs=1e-7)
    assert token_jsd(t, s, vocab_size=1).tolist() == [0.0] * 4  # one token: both distributions are 1
    empty = token_jsd(torch.zeros(0, 3, 9, device="meta"), torch.zeros(0, 3, 11, device="meta"))
    assert empty.shape == (0, 3) and empty.dtype == torch.float32 and empty.device.type == "meta"
    for kwargs, message in (({"vocab_size": 0}, "vocab_size"), ({"vocab_size": 10}, "vocab_size"),
                            ({"chunk_size": 0}, "chunk_size must be positive")):
        with pytest.raises(ValueError, match=message):
            token_jsd(t, s, **kwargs)
    with pytest.raises(ValueError, match="vocabulary dimension"):
        token_jsd(torch.tensor(1.0), torch.zeros(3))


def _response_files(tmp_path, judged: bool):
    """Two response files of one stage group (teacher, student) for questions a and b."""
    import pandas as pd

    files = []
    for name, qids, acc in (("teacher", ["a", "b"], [1.0, 0.0]), ("student", ["b", "a"], [1.0, 1.0])):
        path = tmp_path / f"{name}{'_j' if judged else ''}.parquet"
        frame = pd.DataFrame({"question_id": qids, "source": name, "sample_idx": [0, 0], "token_ids": [[1, 2]] * 2})
        if judged:
            frame["r_acc"] = acc
        frame.to_parquet(path)
        files.append(str(path))
    return files


def test_score_files_scores_each_response_with_its_own_question(tmp_path, monkeypatch):
    """The score job's wiring, without models: the raw responses of two files in, each scored
    with its own question's image, no remote code unless asked; out: one row per response."""
    import pandas as pd

    import masters.checkpoints
    from masters import rewards

    loaded, scored = [], {}
    monkeypatch.setattr(masters.checkpoints, "load_checkpoint",
                        lambda path, **kw: loaded.append((path, kw)) or (f"model:{path}", f"proc:{path}"))

    def score(teacher, student, t_proc, s_proc, joined, **kw):
        scored.update(models=(teacher, student, t_proc, s_proc), joined=joined.copy(), kw=kw)
        return [0.1 * (i + 1) for i in range(len(joined))], [[-0.5, -0.25]] * len(joined)

    monkeypatch.setattr(rewards, "score_responses", score)
    questions = pd.DataFrame({"id": ["a", "b"], "image": ["img-a", "img-b"], "question": ["qa", "qb"]}).set_index("id")
    files = _response_files(tmp_path, judged=False)
    out = rewards.score_files(files, questions, "T", "S", batch_size=3, chunk_size=7)
    assert [p for p, _ in loaded] == ["T", "S"]
    assert all(kw == {"trust_remote_code": False, "dtype": torch.float32, "device": "cpu"} for _, kw in loaded), loaded
    assert scored["models"] == ("model:T", "model:S", "proc:T", "proc:S")
    assert scored["joined"].image.tolist() == ["img-a", "img-b", "img-b", "img-a"]
    assert scored["joined"].question.tolist() == ["qa", "qb", "qb", "qa"]
    assert scored["kw"] == {"batch_size": 3, "chunk_size": 7, "progress": True}
    assert list(out.columns) == rewards.SCORE_COLUMNS
    assert out.question_id.tolist() == ["a", "b", "b", "a"] and out.source.tolist() == ["teacher"] * 2 + ["student"] * 2
    assert out.divergence.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    rewards.score_files(files, questions, "T", "S", batch_size=3, chunk_size=7, trust_remote_code=True)
    assert all(kw["trust_remote_code"] is True for _, kw in loaded[2:])
    with pytest.raises(KeyError, match="responses: question ids not in the questions files"):
        rewards.score_files(files, questions.drop(index="b"), "T", "S", batch_size=3, chunk_size=7)
    pd.DataFrame({"question_id": ["a"], "source": ["teacher"], "token_ids": [[1]]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(KeyError, match=r"bad.parquet: missing column\(s\) \['sample_idx'\]"):  # names the file
        rewards.score_files([files[0], str(tmp_path / "bad.parquet")], questions, "T", "S", batch_size=3, chunk_size=7)


@pytest.mark.parametrize("distill,use,normalize,use_acc,use_distill", [
    ("normalized", "both", True, True, True), ("raw", "both", False, True, True),
    ("normalized", "acc", True, True, False), ("raw", "distill", False, False, True),
])
def test_reward_responses_joins_scores_by_response_and_maps_each_setting(
        tmp_path, distill, use, normalize, use_acc, use_distill):
    """The reward job: judged responses + their scores (in another order: joined by question,
    source and sample, not by position) -> R of each setting; scores of other responses are an error."""
    import pandas as pd

    from masters import rewards

    files = _response_files(tmp_path, judged=True)
    scores = pd.DataFrame({"question_id": ["a", "b", "a", "b"], "source": ["student", "student", "teacher", "teacher"],
                           "sample_idx": 0, "divergence": [0.4, 0.3, 0.1, 0.2],
                           "ref_logprobs": [[-0.4, -0.1], [-0.3, -0.1], [-0.1, -0.1], [-0.2, -0.1]]})
    out = rewards.reward_responses(files, scores, distill=distill, use=use, alpha=0.5)
    expected = rewards.group_rewards(pd.DataFrame({"question_id": ["a", "b", "b", "a"], "r_acc": [1.0, 0.0, 1.0, 1.0],
                                                   "divergence": [0.1, 0.2, 0.3, 0.4]}),
                                     normalize=normalize, alpha=0.5, use_acc=use_acc, use_distill=use_distill)
    assert out.divergence.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert out.r_total.tolist() == pytest.approx(expected.r_total.tolist())
    assert out.r_distill.tolist() == pytest.approx(expected.r_distill.tolist())
    assert [list(r) for r in out.ref_logprobs] == [[-0.1, -0.1], [-0.2, -0.1], [-0.3, -0.1], [-0.4, -0.1]]
    assert list(out.index) == [0, 1, 2, 3] and "_merge" not in out.columns
    with pytest.raises(ValueError, match=r"s.parquet hold 3 scores for 4 judged responses; none for \(question b, source teacher, sample 0\)"):
        rewards.reward_responses(files, scores.iloc[:3], distill=distill, use=use, alpha=0.5, scores_name="s.parquet")
    extra = pd.concat([scores, scores.iloc[:1].assign(question_id="c")], ignore_index=True)
    with pytest.raises(ValueError, match="hold 5 scores for 4 judged responses: scored from other responses"):
        rewards.reward_responses(files, extra, distill=distill, use=use, alpha=0.5)
    with pytest.raises(ValueError, match=r"scores: response \(question a, source student, sample 0\) appears twice"):
        rewards.reward_responses(files, pd.concat([scores, scores.iloc[:1]]), distill=distill, use=use, alpha=0.5)
    short = scores.assign(ref_logprobs=[[-0.4, -0.1], [-0.3], [-0.1, -0.1], [-0.2, -0.1]])
    with pytest.raises(ValueError, match=r"ref_logprobs of \(question b, source student, sample 0\) have another length"):
        rewards.reward_responses(files, short, distill=distill, use=use, alpha=0.5)
    with pytest.raises(KeyError, match=r"scores: missing column\(s\) \['divergence'\]"):
        rewards.reward_responses(files, scores.drop(columns="divergence"), distill=distill, use=use, alpha=0.5)
    with pytest.raises(KeyError, match=r"teacher.parquet: missing column\(s\) \['r_acc'\]"):  # the raw file
        rewards.reward_responses(_response_files(tmp_path, judged=False)[:1], scores, distill=distill, use=use,
                                 alpha=0.5)
