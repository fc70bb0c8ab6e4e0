"""Magnitude masking (METHOD.md section 1, Eq. 1-2): per-tensor thresholds, exact zero counts,
nesting, untouched tensors byte-identical, complete checkpoints (single file and sharded)."""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import struct
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from masters import masked_teacher, masking, safetensors_stream
from masters.masked_teacher import mask_checkpoint
from masters.masking import MaskingOptions, is_maskable, mask_tensor, ratio_dirname, thresholds

RATIOS = [0.2, 0.15, 0.1, 0.05, 0.0]


def _distinct(shape, dtype=torch.float32, seed=0):
    """Random signs and a random permutation of distinct magnitudes, exactly representable in dtype."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.float32:
        mags = (torch.randperm(n, generator=g) + 1).to(torch.float32) / n
    else:  # consecutive positive bit patterns of a 16-bit float: distinct, increasing magnitudes
        bits = torch.arange(0x3000, 0x3000 + n, dtype=torch.int16)
        mags = bits.view(dtype)[torch.randperm(n, generator=g)]
    signs = torch.randint(0, 2, (n,), generator=g).to(mags.dtype) * 2 - 1
    return (mags * signs).reshape(shape)


def _raw_tensors(path):
    """name -> (dtype, shape, raw data bytes) straight from a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def _masked_reference(w, lam):
    """Eq. 2 by the definition, in torch: entries with float32 |w| <= lambda set to +0 (NaN kept)."""
    return w if lam is None else w.masked_fill(w.to(torch.float32).abs() <= lam, 0).contiguous()


def _mask_all(teacher, out, ratios, **kwargs):
    """``mask_checkpoint`` once per ratio (one pass each, as the workflow's jobs); all stats."""
    return pd.concat([mask_checkpoint(teacher, out, r, **kwargs) for r in ratios], ignore_index=True)


def _metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


# ------------------------------------------------------------------ names


def test_default_selection_on_real_tiny_qwen25vl_names(tiny_model, tmp_path):
    def expected(name):
        linear = any(s in name for s in ("_proj.weight", "attn.qkv.weight", "attn.proj.weight", "merger.mlp.0.weight", "merger.mlp.2.weight"))
        return linear and "patch_embed" not in name

    state = tiny_model.state_dict()
    tiny_model.save_pretrained(tmp_path)  # on-disk (hub) names differ from in-memory names
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        disk = {k: f.get_slice(k).get_shape() for k in f.keys()}
    for names in ({k: list(v.shape) for k, v in state.items()}, disk):
        chosen = {k for k, s in names.items() if is_maskable(k, s, None, None)}
        assert chosen == {k for k in names if expected(k)}
        assert len(chosen) == 14  # 7 LM linears + 5 vision-block linears + 2 merger linears
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight", "model.visual.patch_embed.proj.weight",
                 "model.language_model.norm.weight", "model.visual.blocks.0.attn.qkv.bias"):
        assert name in state and not is_maskable(name, state[name].shape, None, None)


def test_selection_other_layouts_and_custom_patterns():
    two_d = (8, 8)
    assert is_maskable("model.layers.3.self_attn.q_proj.weight", two_d, None, None)
    assert is_maskable("visual.blocks.0.mlp.fc1.weight", two_d, None, None)  # Qwen2-VL
    assert is_maskable("model.visual.merger.linear_fc1.weight", two_d, None, None)  # Qwen3-VL
    assert is_maskable("model.visual.deepstack_merger_list.0.linear_fc2.weight", two_d, None, None)
    assert not is_maskable("model.visual.pos_embed.weight", two_d, None, None)
    assert not is_maskable("model.language_model.layers.0.self_attn.q_norm.weight", two_d, None, None)
    assert not is_maskable("model.layers.0.mlp.down_proj.weight", (8,), None, None)  # ndim >= 2 always
    assert is_maskable("model.embed_tokens.weight", two_d, ["embed_tokens"], [])
    assert not is_maskable("model.layers.0.mlp.up_proj.weight", two_d, None, [r"mlp\."])
    with pytest.raises(ValueError, match="include regex"):
        is_maskable("x", two_d, ["("], None)


def test_ratio_dirname_names_the_exact_ratio():
    assert ratio_dirname(0.2) == "masked_r0.20" and ratio_dirname(0.05) == "masked_r0.05"
    assert ratio_dirname(0.175) == "masked_r0.175" and ratio_dirname(0.000125) == "masked_r0.000125"
    assert ratio_dirname(0.0) == ratio_dirname(-0.0) == "masked_r0.00"
    with pytest.raises(ValueError, match="more than 6 decimals"):
        ratio_dirname(0.1234567)  # no name would be its exact ratio
    with pytest.raises(ValueError, match="more than 6 decimals"):
        masking.validate_ratios([0.1 + 0.2])  # 0.30000000000000004: computed, not a schedule ratio
    # the schedule's ratios at a step of 0.025 get eight distinct exact names (regression: 0.17/0.12/...)
    from masters.schedule import ratios

    names = [ratio_dirname(r) for r in ratios(0.2, 0.025)]
    assert names == ["masked_r0.20", "masked_r0.175", "masked_r0.15", "masked_r0.125", "masked_r0.10",
                     "masked_r0.075", "masked_r0.05", "masked_r0.025", "masked_r0.00"]


def test_cli_ratio_list_is_the_schedule_and_errors_name_the_flags():
    from masters import schedule

    assert masked_teacher.schedule_ratios is schedule.ratios
    assert masked_teacher._stage_ratios(0.2, 0.05) == [0.2, 0.15, 0.1, 0.05, 0.0]
    assert masked_teacher._stage_ratios(0.0, None) == [0.0]
    for bad in ((-0.1, 0.05), (0.2, 0.0), (0.2, -0.05), (0.1, 0.2), (0.2, None), (0.2, 0.15)):
        with pytest.raises(ValueError, match="--r-max .* / --step"):
            masked_teacher._stage_ratios(*bad)


# ------------------------------------------------------------------ one tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_zero_count_for_distinct_magnitudes(dtype):
    w = _distinct((48, 40), dtype)
    n = w.numel()
    flat_abs = w.float().abs().reshape(-1)
    order = torch.argsort(flat_abs)
    thr = thresholds(w, RATIOS)
    assert set(thr) == set(RATIOS)
    for r in RATIOS:
        k = math.floor(r * n + 1e-9)
        out = mask_tensor(w, thr[r])
        assert out.dtype == dtype and out.shape == w.shape
        if k == 0:
            assert thr[r] is None and out is w
            continue
        assert thr[r] == float(flat_abs[order[k - 1]])
        zeros = out.reshape(-1) == 0
        assert int(zeros.sum()) == k
        assert bool(zeros[order[:k]].all())  # exactly the k smallest magnitudes
        kept = ~zeros
        assert torch.equal(out.reshape(-1)[kept].view(torch.uint8 if dtype == torch.float32 else torch.int16),
                           w.reshape(-1)[kept].view(torch.uint8 if dtype == torch.float32 else torch.int16))


def test_ties_and_existing_zeros():
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-3, 4, (50, 40), generator=g).to(torch.float32) * 0.25  # many ties, ~1/7 zeros
    absw = w.abs()
    for r in (0.1, 0.3, 0.5, 0.77):
        k = math.floor(r * w.numel())
        lam = thresholds(w, [r])[r]
        out = mask_tensor(w, lam)
        assert int((out == 0).sum()) >= k
        assert bool((out[absw <= lam] == 0).all())
        assert torch.equal(out[absw > lam], w[absw > lam])
    # zeros already present are the smallest: a ratio below their share adds no new zeros
    v = _distinct((40, 50))
    v.view(-1)[torch.randperm(v.numel(), generator=g)[:600]] = 0.0  # 30 % zeros
    assert thresholds(v, [0.2])[0.2] == 0.0
    assert int((mask_tensor(v, 0.0) == 0).sum()) == 600
    assert int((mask_tensor(v, thresholds(v, [0.4])[0.4]) == 0).sum()) == 800


def test_masks_are_nested_across_ratios():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    thr = thresholds(w, RATIOS)
    masks = [mask_tensor(w, thr[r]) == 0 for r in sorted(RATIOS)]
    for small, large in zip(masks, masks[1:]):
        assert bool((large | ~small).all()), "an entry zeroed at a smaller ratio survived a larger one"


def test_thresholds_above_2_pow_24_elements_match_sorted_reference():
    n = 17_000_000
    assert n > 2**24
    w = torch.randn(n, generator=torch.Generator().manual_seed(3))
    ratios = [0.2, 0.05, 1e-7, 0.0]
    thr = thresholds(w, ratios)
    ref = np.sort(np.abs(w.numpy()))
    for r in ratios:
        k = math.floor(r * n + 1e-9)
        assert thr[r] == (None if k == 0 else float(ref[k - 1]))


def test_thresholds_reject_bad_ratios_and_non_float():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        thresholds(torch.ones(4, 4), [1.0])
    with pytest.raises(TypeError, match="floating"):
        thresholds(torch.ones(4, 4, dtype=torch.int32), [0.1])


# ------------------------------------------------------------------ checkpoints


def _check_masked_dir(teacher, out, ratios, weight_files):
    """Layout, metadata, untouched tensors and masked tensors of every masked_r* directory."""
    teacher_files = {p.name for p in teacher.iterdir()}
    tensors = {f: _raw_tensors(teacher / f) for f in weight_files}
    zeroed = {}
    for r in sorted(ratios):
        d = out / ratio_dirname(r)
        assert {p.name for p in d.iterdir()} == teacher_files | {masked_teacher.STATS_FILE}
        for name in teacher_files - set(weight_files):
            assert filecmp.cmp(teacher / name, d / name, shallow=False), name
        for f in weight_files:
            assert _metadata(d / f) == _metadata(teacher / f) == {"format": "pt"}
            got = _raw_tensors(d / f)
            assert list(got) == list(tensors[f])
            for name, (dtype, shape, raw) in tensors[f].items():
                gdtype, gshape, graw = got[name]
                assert (gdtype, gshape) == (dtype, shape)
                if r == 0 or not is_maskable(name, shape, None, None):
                    assert graw == raw, f"{name} changed at r={r}"
                    continue
                with safe_open(str(d / f), "pt") as sf, safe_open(str(teacher / f), "pt") as tf:
                    m, w = sf.get_tensor(name), tf.get_tensor(name)
                k = math.floor(r * w.numel() + 1e-9)
                z = m == 0
                assert int(z.sum()) >= k and bool((m[~z] == w[~z]).all())
                if name in zeroed:
                    assert bool((z | ~zeroed[name]).all()), f"{name}: masks not nested"
                zeroed[name] = z
        if r == 0:
            for f in weight_files:
                assert filecmp.cmp(teacher / f, d / f, shallow=False)


def test_single_file_checkpoint_and_stats(tiny_model, processor, tmp_path):
    from masters.checkpoints import save_checkpoint

    teacher = tmp_path / "teacher"
    save_checkpoint(tiny_model, processor, teacher)
    out = tmp_path / "masked"
    stats = _mask_all(teacher, out, [0.2, 0.1, 0.0], progress=False)
    _check_masked_dir(teacher, out, [0.2, 0.1, 0.0], ["model.safetensors"])

    assert list(stats.columns[:6]) == ["name", "numel", "ratio", "threshold", "zeros", "masked"]
    n_tensors = len(_raw_tensors(teacher / "model.safetensors"))
    assert len(stats) == 3 * n_tensors and stats["masked"].dtype == bool
    sel = stats[stats.masked]
    assert sel["name"].nunique() == 14
    assert sel[sel.ratio == 0.0].threshold.isna().all() and sel[sel.ratio > 0].threshold.notna().all()
    assert stats[~stats.masked].threshold.isna().all()
    # random init: distinct magnitudes, so exactly k zeros where masked
    for row in sel[sel.ratio > 0].itertuples():
        assert row.zeros == math.floor(row.ratio * row.numel + 1e-9) == row.k
    with safe_open(str(out / "masked_r0.20" / "model.safetensors"), "pt") as f:
        for row in stats[stats.ratio == 0.2].itertuples():
            assert int((f.get_tensor(row.name) == 0).sum()) == row.zeros
    for r in (0.2, 0.1, 0.0):
        csv = pd.read_csv(out / ratio_dirname(r) / masked_teacher.STATS_FILE)
        assert len(csv) == n_tensors and (csv.ratio == r).all()
        assert csv.zeros.tolist() == stats[stats.ratio == r].zeros.tolist()
        assert list(csv.columns) == masked_teacher.STATS_COLUMNS  # no index column
    assert list(stats.columns) == masked_teacher.STATS_COLUMNS
    assert stats.sparsity.tolist() == pytest.approx((stats.zeros / stats.numel).tolist())


def test_sharded_bf16_checkpoint_loads_and_runs(tiny_model, processor, tmp_path):
    from transformers import AutoModelForImageTextToText

    teacher = tmp_path / "teacher"
    bf16 = AutoModelForImageTextToText.from_config(tiny_model.config, dtype=torch.bfloat16)
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in tiny_model.state_dict().items()})
    bf16.save_pretrained(teacher, max_shard_size="200KB")
    processor.save_pretrained(teacher)
    shards = sorted(p.name for p in teacher.glob("*.safetensors"))
    assert len(shards) > 1 and (teacher / safetensors_stream.INDEX_FILE).is_file()

    out = tmp_path / "not/yet/there"  # parents made
    stats = _mask_all(teacher, out, [0.2, 0.05, 0.0], progress=False)
    _check_masked_dir(teacher, out, [0.2, 0.05, 0.0], shards)
    d = out / "masked_r0.20"
    # one stats row per tensor of every shard
    n_tensors = sum(len(_raw_tensors(teacher / shard)) for shard in shards)
    assert len(stats) == 3 * n_tensors and set(stats.shard) == set(shards)
    assert len(pd.read_csv(d / masked_teacher.STATS_FILE)) == n_tensors
    assert sorted(p.name for p in d.glob("*.safetensors")) == shards
    assert (d / safetensors_stream.INDEX_FILE).read_bytes() == (teacher / safetensors_stream.INDEX_FILE).read_bytes()
    weight_map = json.loads((teacher / safetensors_stream.INDEX_FILE).read_text())["weight_map"]
    assert all(weight_map[row.name] == row.shard for row in stats.itertuples())
    assert set(stats.dtype) == {"BF16"}

    model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32)
    params = dict(model.named_parameters())
    q = params["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert int((q == 0).sum()) >= math.floor(0.2 * q.numel())
    assert int((params["lm_head.weight"] == 0).sum()) == 0
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[:2] == (1, 4) and torch.isfinite(logits).all()


def _synthetic(dirpath, tensors):
    dirpath.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dirpath / "model.safetensors"), metadata={"format": "pt"})
    (dirpath / "config.json").write_text("{}")
    return dirpath


def test_streaming_bit_path_matches_reference_for_every_float_dtype(tmp_path):
    # small blocks and copy chunks: many blocks per tensor, many writes
    options = MaskingOptions(block=1000, copy_chunk=4096)
    g = torch.Generator().manual_seed(4)
    tensors = {f"model.layers.0.mlp.{d}_proj.weight": (torch.randn(70, 90, generator=g) * 0.02).to(dt)
               for d, dt in (("up", torch.bfloat16), ("down", torch.float16), ("gate", torch.float32))}
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.randn(30, 40, generator=g, dtype=torch.float64)
    with_nan = torch.randn(50, 60, generator=g).to(torch.bfloat16)
    with_nan.view(-1)[:7] = float("nan")
    tensors["model.layers.0.self_attn.k_proj.weight"] = with_nan
    tensors["model.embed_tokens.weight"] = torch.randn(3000, 8, generator=g).to(torch.bfloat16)  # 12 copy chunks
    teacher = _synthetic(tmp_path / "t", tensors)
    stats = _mask_all(teacher, tmp_path / "o", [0.3, 0.1, 0.0], progress=False,
                      options=options).set_index(["name", "ratio"])
    for r in (0.3, 0.1, 0.0):
        with safe_open(str(tmp_path / "o" / ratio_dirname(r) / "model.safetensors"), "pt") as f:
            for name, w in tensors.items():
                got = f.get_tensor(name)
                if "embed" in name:
                    assert torch.equal(got.view(torch.int16), w.view(torch.int16))
                    continue
                lam = thresholds(w, [r])[r]
                assert lam == _sorted_reference(w, [r])[0][r]
                want = _masked_reference(w, lam)
                assert got.dtype == w.dtype
                assert torch.equal(got.view(torch.uint8), want.contiguous().view(torch.uint8)), (name, r)
                row = stats.loc[(name, r)]
                assert (math.isnan(row.threshold) and lam is None) or row.threshold == lam
                assert row.zeros == int((got == 0).sum())
    with safe_open(str(tmp_path / "o" / "masked_r0.30" / "model.safetensors"), "pt") as f:
        assert bool(f.get_tensor("model.layers.0.self_attn.k_proj.weight").view(-1)[:7].isnan().all())  # NaN kept
    row = stats.loc[("model.layers.0.self_attn.k_proj.weight", 0.3)]
    assert row.zeros >= row.k == math.floor(0.3 * 3000)


def test_a_killed_runs_partial_directory_is_removed_by_the_next_run(tmp_path):
    """A mask job killed mid-write (SIGKILL, a scheduler's time limit) leaves its hidden partial
    directory, up to a teacher's size: the next run of that ratio removes it; other ratios' stay."""
    teacher = _synthetic(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": _distinct((16, 16), seed=6)})
    out = tmp_path / "o"
    for name in (".masked_r0.25.partial-99999", ".masked_r0.50.partial-99999"):
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"torn")
    mask_checkpoint(teacher, out, 0.25, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".masked_r0.50.partial-99999", "masked_r0.25"]


def test_custom_include_exclude(tmp_path):
    emb = _distinct((32, 16), seed=5)
    lin = _distinct((16, 16), seed=6)
    teacher = _synthetic(tmp_path / "t", {"model.embed_tokens.weight": emb, "model.layers.0.mlp.up_proj.weight": lin})
    stats = mask_checkpoint(teacher, tmp_path / "o", 0.25, include=["embed_tokens"], exclude=[], progress=False)
    assert stats.set_index("name").masked.to_dict() == {"model.embed_tokens.weight": True,
                                                        "model.layers.0.mlp.up_proj.weight": False}
    with safe_open(str(tmp_path / "o" / "masked_r0.25" / "model.safetensors"), "pt") as f:
        assert int((f.get_tensor("model.embed_tokens.weight") == 0).sum()) == 128
        assert torch.equal(f.get_tensor("model.layers.0.mlp.up_proj.weight"), lin)
    # the CLI takes several regexes per flag
    parser = argparse.ArgumentParser(prog="masters")
    masked_teacher.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mask", "--teacher", str(teacher), "--out", str(tmp_path / "c"), "--ratios", "0.25",
                              "--quiet", "--include", "embed_tokens", "up_proj", "--exclude", "nothing", "else"])
    assert args.include == ["embed_tokens", "up_proj"] and args.exclude == ["nothing", "else"]
    args.func(args)
    with safe_open(str(tmp_path / "c" / "masked_r0.25" / "model.safetensors"), "pt") as f:
        assert int((f.get_tensor("model.layers.0.mlp.up_proj.weight") == 0).sum()) == 64


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mask_checkpoint(tmp_path / "nowhere", tmp_path / "o", 0.1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        mask_checkpoint(tmp_path / "empty", tmp_path / "o", 0.1)

    teacher = _synthetic(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": torch.randn(64, 64)})
    for bad in (1.0, -0.1, float("nan"), 0.1 + 0.2, [0.1]):  # 0.1 + 0.2: no directory names it exactly
        with pytest.raises(ValueError):
            mask_checkpoint(teacher, tmp_path / "o", bad, progress=False)

    data = (teacher / "model.safetensors").read_bytes()
    for cut, label in ((len(data) - 100, "data"), (20, "header")):
        broken = tmp_path / f"broken_{label}"
        broken.mkdir()
        (broken / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"model\.safetensors"):
            mask_checkpoint(broken, tmp_path / "o", 0.1, progress=False)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())  # validated before writing


def test_cli_subcommand(tmp_path, capsys):
    teacher = _synthetic(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": _distinct((20, 20), seed=7),
                                          "model.norm.weight": torch.ones(20)})
    parser = argparse.ArgumentParser(prog="masters")
    sub = parser.add_subparsers(dest="command", required=True)
    p = masked_teacher.register(sub)
    assert all(a.help for a in p._actions)
    args = parser.parse_args(["mask", "--teacher", str(teacher), "--r-max", "0.2", "--step", "0.1",
                              "--out", str(tmp_path / "o"), "--stats", str(tmp_path / "s/deep/stats.csv"), "--quiet"])
    capsys.readouterr()
    args.func(args)
    assert "[mask]" not in capsys.readouterr().err  # --quiet: no progress lines
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["masked_r0.00", "masked_r0.10", "masked_r0.20"]
    stats = pd.read_csv(tmp_path / "s/deep/stats.csv")  # its directories made
    assert len(stats) == 6
    assert stats.query("name == 'model.layers.0.mlp.up_proj.weight'").zeros.tolist() == [80, 40, 0]
    with pytest.raises(ValueError, match="step"):
        args = parser.parse_args(["mask", "--teacher", str(teacher), "--r-max", "0.2", "--out", str(tmp_path / "o")])
        args.func(args)
    assert list(stats.columns)[0] == "name"  # no index column

    def run(*flags):
        args = parser.parse_args(["mask", "--teacher", str(teacher), "--out", str(tmp_path / "x"), "--quiet",
                                  "--stats", str(tmp_path / "x.csv"), *flags])
        args.func(args)
        return pd.read_csv(tmp_path / "x.csv").set_index(["name", "ratio"]).zeros

    args = parser.parse_args(["mask", "--teacher", str(teacher), "--out", str(tmp_path / "y"), "--ratios", "0.1"])
    args.func(args)
    assert "[mask] masked_r0.10" in capsys.readouterr().err  # progress lines unless --quiet
    with pytest.raises(SystemExit):  # --out is required
        parser.parse_args(["mask", "--teacher", str(teacher), "--ratios", "0.1"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
    zeros = run("--ratios", "0.3", "0.0")
    assert zeros[("model.layers.0.mlp.up_proj.weight", 0.3)] == 120 and "masked_r0.30" in capsys.readouterr().out
    assert run("--ratios", "0.3", "--include", "down_proj").to_dict() == {
        ("model.layers.0.mlp.up_proj.weight", 0.3): 0, ("model.norm.weight", 0.3): 0}  # the include list replaces
    assert run("--ratios", "0.3", "--exclude", "up_proj").to_dict() == {
        ("model.layers.0.mlp.up_proj.weight", 0.3): 0, ("model.norm.weight", 0.3): 0}  # the exclude list replaces
    with pytest.raises(SystemExit):
        parser.parse_args(["mask", "--ratios", "0.1", "--out", str(tmp_path / "o")])  # --teacher is required


# ------------------------------------------------------------------ exact bit-pattern selection


def _sorted_reference(w, ratios):
    """Thresholds by the definition: the k-th smallest float32 |w| of a full sort (NaN sorts last)."""
    ref = np.sort(np.abs(w.detach().reshape(-1).to(torch.float32).numpy()))
    out = {}
    for r in ratios:
        k = masking.num_masked(r, ref.size)
        out[r] = None if k == 0 else float(ref[k - 1])
    return out, ref


def _special_16bit(n, dtype, seed):
    """16-bit floats with heavy ties, +0/-0, denormals, random normals and a few infinities."""
    g = torch.Generator().manual_seed(seed)
    denormal_top = 0x007F if dtype == torch.bfloat16 else 0x03FF
    few = torch.randint(0x3000, 0x3008, (n,), generator=g, dtype=torch.int32)  # 8 magnitudes: long tie runs
    any_ = torch.randint(0, 0x7C00, (n,), generator=g, dtype=torch.int32)  # finite in both formats
    den = torch.randint(1, denormal_top + 1, (n,), generator=g, dtype=torch.int32)
    kind = torch.randint(0, 100, (n,), generator=g)
    mag = torch.where(kind < 40, few, torch.where(kind < 55, den, any_))
    mag = torch.where(kind >= 95, torch.zeros_like(mag), mag)  # 5 % zeros ...
    mag[torch.randperm(n, generator=g)[:3]] = 0x7F80 if dtype == torch.bfloat16 else 0x7C00  # +-inf
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32) << 15  # ... of both signs (-0 too)
    return (mag | sign).to(torch.int16).view(dtype)


def _tie_ratios(ref):
    """Ratios whose k lands strictly inside a run of equal magnitudes (and one on a zero run)."""
    n = ref.size
    out = []
    for target in (0.02, 0.3, 0.45, 0.61, 0.8):
        k = int(target * n)
        if ref[k - 1] == ref[k]:
            r = float(f"{k / n:.6f}")
            k2 = masking.num_masked(r, n)
            if 0 < k2 < n and ref[k2 - 1] == ref[k2] and (k2 < 2 or ref[k2 - 2] == ref[k2 - 1]):
                out.append(r)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_histogram_selection_matches_sorted_reference(dtype):
    w = _special_16bit(200_003, dtype, seed=11).reshape(-1, 1)
    ref_thr, ref = _sorted_reference(w, [0.5])
    ties = _tie_ratios(ref)
    assert len(ties) >= 3, "the data must put some k inside a run of ties"
    ratios = [0.0, 1e-6, 0.01, 0.04, 0.05, 0.2, 0.5, 0.9, 0.99997] + ties
    ref_thr, ref = _sorted_reference(w, ratios)
    got = thresholds(w, ratios)
    assert got == ref_thr
    # counts from the histogram: entries <= threshold (the zeros masking leaves)
    bits = w.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    name = "BF16" if dtype == torch.bfloat16 else "F16"
    ks = [masking.num_masked(r, bits.size) for r in ratios]
    pattern, at_most = masking.select_bits(bits, name, ks)
    assert set(pattern) == {k for k in ks if k}
    for r, k in zip(ratios, ks):
        if k:
            assert masking.pattern_value(pattern[k], name) == ref_thr[r]
            assert at_most[k] == int((ref <= ref_thr[r]).sum()) >= k
    # the bit-pattern thresholds are the values the float path (numpy.partition) selects
    absw = np.abs(w.reshape(-1).to(torch.float32).numpy())
    values = masking._kth_smallest(absw, [masking.num_masked(r, absw.size) for r in ratios])
    assert {r: values.get(masking.num_masked(r, absw.size)) for r in ratios} == ref_thr


def test_f32_radix_selection_matches_sorted_reference():
    g = torch.Generator().manual_seed(12)
    n = 300_000
    w = torch.randint(-40, 41, (n,), generator=g).to(torch.float32) * 0.01  # ties and zeros
    w[torch.randperm(n, generator=g)[:20_000]] = -0.0
    den = torch.randint(1, 1 << 23, (30_000,), generator=g, dtype=torch.int32).view(torch.float32)
    w[torch.randperm(n, generator=g)[:30_000]] = den * torch.where(torch.rand(30_000, generator=g) < 0.5, -1.0, 1.0)
    w[torch.randperm(n, generator=g)[:50_000]] = torch.randn(50_000, generator=g)  # distinct normals
    w[:2] = torch.tensor([float("inf"), -float("inf")])
    ref_thr, ref = _sorted_reference(w, [0.5])
    ratios = [0.0, 1e-6, 0.05, 0.06, 0.1, 0.15, 0.2, 0.5, 0.77, 0.99999] + _tie_ratios(ref)
    assert len(ratios) >= 13
    ref_thr, ref = _sorted_reference(w, ratios)
    assert thresholds(w.reshape(500, 600), ratios) == ref_thr
    ks = [masking.num_masked(r, n) for r in ratios]
    pattern, at_most = masking.select_bits(w.view(torch.int32).numpy().view(np.uint32), "F32", ks)
    assert set(pattern) == {k for k in ks if k}
    for r, k in zip(ratios, ks):
        if k:
            assert at_most[k] == int((ref <= ref_thr[r]).sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_selection_above_2_pow_24_elements_with_ties(dtype):
    n = 4099 * 4097  # > 2**24
    g = torch.Generator().manual_seed(13)
    w = (torch.randn(n, generator=g) * 0.02).to(dtype)  # 16-bit: every magnitude repeats many times
    if dtype == torch.float32:
        w = torch.round(w * 4096) / 4096  # ties in f32 too
    w[torch.randperm(n, generator=g)[:500_000]] = 0.0
    ratios = [0.2, 0.15, 0.1, 0.05, 1e-7, 0.0, 0.5]
    ref_thr, ref = _sorted_reference(w, ratios)
    two = MaskingOptions(threads=2)  # the histogram split over two worker threads
    assert thresholds(w, ratios, two) == ref_thr
    assert thresholds(w.reshape(4099, 4097).t(), ratios, two) == ref_thr  # non-contiguous input


def test_nan_threshold_is_an_error_on_the_bit_path(tmp_path):
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        w = torch.randn(40, 50, generator=torch.Generator().manual_seed(14)).to(dtype)
        w.view(-1)[:1500] = float("nan")  # 75 % NaN: the 0.5-threshold would be NaN
        assert thresholds(w, [0.2])[0.2] is not None  # NaN sorts last: small ratios are fine
        with pytest.raises(ValueError, match="NaN"):
            thresholds(w, [0.5])
    teacher = _synthetic(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": w})
    with pytest.raises(ValueError, match="NaN"):
        mask_checkpoint(teacher, tmp_path / "o", 0.5, progress=False)
    assert not list((tmp_path / "o").iterdir())


def test_streaming_threads_and_writeback_match_reference_with_special_values(tmp_path):
    # tiny blocks and chunks, two worker threads, writeback advice every 4 KiB
    options = MaskingOptions(block=777, chunk_blocks=3, threads=2, writeback=4096, copy_chunk=8192)
    g = torch.Generator().manual_seed(15)
    f32 = torch.randint(-30, 31, (90, 110), generator=g).to(torch.float32) * 0.01
    f32.view(-1)[:500] = -0.0
    f32.view(-1)[500:700] = torch.randint(1, 1 << 23, (200,), generator=g, dtype=torch.int32).view(torch.float32)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": _special_16bit(90 * 110, torch.bfloat16, 16).reshape(90, 110),
        "model.layers.0.mlp.down_proj.weight": _special_16bit(90 * 110, torch.float16, 17).reshape(110, 90),
        "model.layers.0.mlp.gate_proj.weight": f32,
        "model.layers.0.self_attn.q_proj.weight": torch.randint(-5, 6, (70, 30), generator=g).to(torch.float64) / 7,
        "model.layers.0.self_attn.k_proj.weight": torch.zeros(0, 5, dtype=torch.bfloat16),  # empty
        "model.embed_tokens.weight": torch.randn(500, 40, generator=g).to(torch.bfloat16),
        "model.norm.weight": torch.ones(40),
    }
    teacher = _synthetic(tmp_path / "t", tensors)
    ratios = [0.45, 0.3, 0.2, 0.05, 0.0]
    stats = _mask_all(teacher, tmp_path / "o", ratios, progress=False, options=options)
    stats = stats.set_index(["name", "ratio"])
    _check_masked_dir(teacher, tmp_path / "o", ratios, ["model.safetensors"])
    for r in ratios:
        with safe_open(str(tmp_path / "o" / ratio_dirname(r) / "model.safetensors"), "pt") as f:
            for name, w in tensors.items():
                got = f.get_tensor(name)
                if not is_maskable(name, w.shape, None, None):
                    assert torch.equal(got.view(torch.uint8), w.contiguous().view(torch.uint8))
                    continue
                lam = thresholds(w, [r])[r]
                assert lam == _sorted_reference(w, [r])[0][r]
                want = _masked_reference(w, lam)
                assert torch.equal(mask_tensor(w, lam).view(torch.uint8), want.view(torch.uint8))
                assert torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)), (name, r)
                row = stats.loc[(name, r)]
                assert (math.isnan(row.threshold) and lam is None) or row.threshold == lam
                assert row.zeros == int((got == 0).sum())


def test_writer_keeps_the_order_and_writes_back_as_the_file_grows(tmp_path):
    rng = np.random.default_rng(18)
    expected = bytearray()
    with open(tmp_path / "f", "wb") as f:
        writer = safetensors_stream.Writer(f, writeback=4096)
        for _ in range(100):
            buf = rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8)
            writer.write(buf)
            expected += buf.tobytes()
    assert (tmp_path / "f").read_bytes() == bytes(expected)
    wb = writer._writeback
    assert wb.written == len(expected) and wb.started > len(expected) - 4096 - 3000
    assert 0 < wb.dropped < wb.steps[0] and len(wb.steps) == safetensors_stream.WRITEBACK_LAG  # pages dropped behind


def test_write_error_in_a_later_shard_propagates_and_leaves_nothing(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(19)
    teacher = tmp_path / "t"
    teacher.mkdir()
    weight_map = {}
    for i in range(3):  # three shards; writing the second one fails
        name = f"model.layers.{i}.mlp.up_proj.weight"
        save_file({name: torch.randn(64, 64, generator=g).to(torch.bfloat16)}, str(teacher / f"s{i}.safetensors"))
        weight_map[name] = f"s{i}.safetensors"
    (teacher / safetensors_stream.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += memoryview(b).nbytes
            if self.n > 5000:
                raise OSError(28, "No space left on device")
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if "w" in mode and str(path).endswith("s1.safetensors") else f

    monkeypatch.setattr(masked_teacher, "open", fake_open, raising=False)
    with pytest.raises(OSError, match="No space"):
        mask_checkpoint(teacher, tmp_path / "o", 0.1, progress=False)
    assert not list((tmp_path / "o").iterdir())


def test_f64_selection_of_every_k_matches_sorted_reference():
    """numpy.partition path (F64): every k from 1 to n-1 in one call, shuffled distinct values and
    ties; consecutive k reuse the prefix the previous partition left (found by mutation testing)."""
    g = torch.Generator().manual_seed(3)
    for w in (torch.randn(41, generator=g, dtype=torch.float64),
              torch.randint(-3, 4, (41,), generator=g).to(torch.float64)):
        ratios = [k / 41 for k in range(41)]
        ref, _ = _sorted_reference(w, ratios)
        assert masking.thresholds(w, ratios) == ref
        # far-apart k (one k alone, and two): each partition must place exactly its own k-th value
        for few in ([5 / 41], [1 / 41, 17 / 41], [9 / 41, 40 / 41]):
            ref, _ = _sorted_reference(w, few)
            assert masking.thresholds(w, few) == ref, few


def test_zero_counts_of_copied_tensors_of_every_dtype(tmp_path):
    """Stats of tensors that are copied, not masked: +0 and -0 counted for float8 (sign bit
    ignored), every zero element for integer dtypes; the copies are byte-identical."""
    e4m3 = torch.tensor([0.0, -0.0, 1.0, -2.0, 0.5, 0.0], dtype=torch.float8_e4m3fn)
    e5m2 = torch.tensor([-0.0, 3.0, 0.0, 0.0, 0.0, -1.0, 2.0], dtype=torch.float8_e5m2)
    tensors = {"a.f8_e4m3": e4m3, "b.f8_e5m2": e5m2,
               "c.i64": torch.tensor([0, 5, -1, 0, 7], dtype=torch.int64),
               "d.i16": torch.tensor([0, 0, 0, 9], dtype=torch.int16),
               "e.u8": torch.tensor([0, 255, 1, 0, 0, 0, 2, 3], dtype=torch.uint8),
               "f.i32": torch.tensor([7, 0, 0, -3], dtype=torch.int32)}
    teacher = _synthetic(tmp_path / "t", tensors)
    stats = mask_checkpoint(teacher, tmp_path / "o", 0.0, progress=False).set_index("name")
    assert stats.zeros.to_dict() == {"a.f8_e4m3": 3, "b.f8_e5m2": 4, "c.i64": 2, "d.i16": 3, "e.u8": 4, "f.i32": 2}
    assert not stats.masked.any()
    with safe_open(str(tmp_path / "o" / "masked_r0.00" / "model.safetensors"), "pt") as f:
        for name, w in tensors.items():
            assert torch.equal(f.get_tensor(name).view(torch.uint8), w.view(torch.uint8))


def test_copies_in_small_unaligned_chunks_count_whole_elements_and_unknown_dtypes_are_minus_one(tmp_path):
    """A copy chunk that is not a multiple of the element size is rounded down to one (the zero
    count reads whole elements), and a dtype safetensors has but the count does not know (C64)
    is copied byte for byte with zeros = -1 over any number of chunks."""
    import struct

    f32 = np.array([0.0, 1.5, -0.0, 0.0, 2.0, 0.0, 3.0], dtype=np.float32).tobytes()
    c64 = np.array([0, 1 + 1j, 0, 2j], dtype=np.complex64).tobytes()
    u8 = bytes([0, 1, 0, 2, 3, 0, 4, 5, 6, 0, 7])  # 11 bytes: a 1-byte last chunk at chunk 5
    ends = np.cumsum([len(f32), len(c64), len(u8)]).tolist()
    header = {"a.f32": {"dtype": "F32", "shape": [7], "data_offsets": [0, ends[0]]},
              "b.c64": {"dtype": "C64", "shape": [4], "data_offsets": [ends[0], ends[1]]},
              "c.u8": {"dtype": "U8", "shape": [11], "data_offsets": [ends[1], ends[2]]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    teacher = tmp_path / "t"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + f32 + c64 + u8)
    for chunk in (5, 6, 7, 1 << 20):
        out = tmp_path / f"o{chunk}"
        stats = mask_checkpoint(teacher, out, 0.1, progress=False,
                                options=MaskingOptions(copy_chunk=chunk)).set_index("name")
        assert stats.zeros.to_dict() == {"a.f32": 4, "b.c64": -1, "c.u8": 4}, chunk
        assert (out / "masked_r0.10/model.safetensors").read_bytes() == (teacher / "model.safetensors").read_bytes()


def test_other_files_copied_with_subdirectories_but_no_caches_or_partial_outputs(tmp_path):
    """Non-weight files are copied, subdirectories too; a `.cache` directory and the masking's own
    partial outputs (`.masked_r*`, when the output is inside the teacher) are not; a shard the
    index lists but the directory lacks is an error that names it; a file of no tensors masks."""
    teacher = _synthetic(tmp_path / "t", {"x.weight": torch.ones(3)})
    (teacher / "extra").mkdir()
    (teacher / "extra" / "notes.txt").write_text("kept")
    (teacher / ".cache").mkdir()
    (teacher / ".cache" / "lock").write_text("skipped")
    (teacher / ".masked_r0.50.partial-7").mkdir()
    mask_checkpoint(teacher, tmp_path / "o", 0.1, progress=False)
    out = tmp_path / "o" / "masked_r0.10"
    assert (out / "extra" / "notes.txt").read_text() == "kept"
    assert not (out / ".cache").exists() and not list(out.glob(".masked_r*"))
    (teacher / safetensors_stream.INDEX_FILE).write_text(json.dumps({"weight_map": {"x.weight": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"shard .*/t/gone.safetensors listed in .* is missing"):
        mask_checkpoint(teacher, tmp_path / "o2", 0.1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({}, str(empty / "model.safetensors"))
    stats = mask_checkpoint(empty, tmp_path / "o3", 0.1, progress=False)
    assert stats.empty and (tmp_path / "o3/masked_r0.10/model.safetensors").read_bytes() == \
        (empty / "model.safetensors").read_bytes()


def test_buffer_pool_reuses_what_fits_and_drops_beyond_its_budget():
    pool = safetensors_stream.Buffers(keep_bytes=3 << 20)
    exact = np.empty(1000, np.uint8)
    pool.put(exact)
    assert pool.get(1000) is exact  # a free buffer of exactly the size is reused
    big = np.empty(3 << 20, np.uint8)
    pool.put(big)
    small = pool.get(1000)  # far too large to lend for 1000 bytes: a new buffer, the big one stays free
    assert small is not big and small.size == 1000 and pool.get(1 << 20) is big
    pool.put(np.empty(2 << 20, np.uint8))
    pool.put(np.empty(1 << 20, np.uint8))
    pool.put(big)  # 6 MiB free > 3 MiB budget: the largest are dropped until it fits
    assert [b.size for b in pool._free] == [1 << 20, 2 << 20]  # exactly at the budget: kept


# ------------------------------------------------------------------ options and threads


def _mixed_teacher(tmp_path):
    g = torch.Generator().manual_seed(20)
    return _synthetic(tmp_path / "t", {
        "model.layers.0.mlp.up_proj.weight": (torch.randn(300, 200, generator=g) * 0.02).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(200, 300, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(50, 40, generator=g, dtype=torch.float64),
        "model.embed_tokens.weight": torch.randn(400, 30, generator=g).to(torch.float16)})


def test_options_change_no_byte(tmp_path):
    """Threads, blocks, chunks and writeback are knobs: the outputs and
    stats of one and of three worker threads (tiny pieces) are identical to the defaults'."""
    teacher = _mixed_teacher(tmp_path)
    ratios = [0.3, 0.1, 0.0]
    runs = {"default": None, "one": MaskingOptions(threads=1),
            "three": MaskingOptions(threads=3, block=1000, chunk_blocks=2, copy_chunk=3000, writeback=0)}
    stats = {k: _mask_all(teacher, tmp_path / k, ratios, progress=False, options=o) for k, o in runs.items()}
    for k in ("one", "three"):
        pd.testing.assert_frame_equal(stats[k], stats["default"])
        for r in ratios:
            for f in ("model.safetensors", masked_teacher.STATS_FILE):
                a, b = tmp_path / k / ratio_dirname(r) / f, tmp_path / "default" / ratio_dirname(r) / f
                assert a.read_bytes() == b.read_bytes(), (k, r, f)
    with pytest.raises(ValueError, match="threads"):
        MaskingOptions(threads=0)


def _threads_after(fn) -> set[str]:
    """Names of the threads that ``fn()`` leaves running (it may raise)."""
    before = set(threading.enumerate())
    try:
        fn()
    except (OSError, ValueError):
        pass
    return {t.name for t in set(threading.enumerate()) - before}


def test_worker_threads_are_shut_down_after_a_call_and_after_an_error(tmp_path, monkeypatch):
    teacher = _mixed_teacher(tmp_path)
    opts = MaskingOptions(threads=3, block=1000)
    assert _threads_after(lambda: mask_checkpoint(teacher, tmp_path / "o", 0.2, progress=False,
                                                  options=opts)) == set()
    assert _threads_after(lambda: thresholds(torch.randn(3000, 300), [0.1], opts)) == set()

    def failing_select(*args, **kwargs):
        raise ValueError("selection failed")

    monkeypatch.setattr(masked_teacher, "select", failing_select)
    with pytest.raises(ValueError, match="selection failed"):
        mask_checkpoint(teacher, tmp_path / "o2", 0.2, progress=False, options=opts)
    assert _threads_after(lambda: mask_checkpoint(teacher, tmp_path / "o2", 0.2, progress=False,
                                                  options=opts)) == set()
    assert not list((tmp_path / "o2").iterdir())


def test_cli_threads_reach_the_options(tmp_path, monkeypatch):
    teacher = _synthetic(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": _distinct((20, 20), seed=8)})
    seen = []
    real = masked_teacher.mask_checkpoint
    monkeypatch.setattr(masked_teacher, "mask_checkpoint",
                        lambda *a, options=None, **k: seen.append(options) or real(*a, options=options, **k))
    parser = argparse.ArgumentParser(prog="masters")
    masked_teacher.register(parser.add_subparsers(dest="command"))
    for flags, threads in ((["--threads", "3"], 3), ([], masking.default_threads())):
        args = parser.parse_args(["mask", "--teacher", str(teacher), "--out", str(tmp_path / "x"), "--quiet",
                                  "--ratios", "0.1", *flags])
        args.func(args)
        assert seen[-1].threads == threads
    assert masking.default_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_mask_tensor_at_any_threshold_matches_the_definition(dtype):
    """Thresholds that are no value of the tensor's dtype (between two patterns, above the
    largest finite, negative, infinite) mask like the float32 comparison of Eq. 2."""
    w = _special_16bit(5000, torch.float16, 21).to(dtype) if dtype != torch.bfloat16 \
        else _special_16bit(5000, dtype, 21)
    for lam in (0.0, 1e-7, 0.3, 0.30001, 1.5, 70000.0, 3e38, float("inf"), -1.0):
        want = _masked_reference(w, lam)
        got = mask_tensor(w, lam)
        assert got.dtype == w.dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (dtype, lam)
    with pytest.raises(ValueError, match="NaN"):
        mask_tensor(w, float("nan"))


# ---- plumbing and edge contracts (found by mutation testing) ----------------------------------


def test_default_threads_is_the_affinity_else_the_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert masking.default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert masking.default_threads() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    for count, threads in ((5, 5), (1, 1), (None, 1)):  # cpu_count() may be None
        monkeypatch.setattr(os, "cpu_count", lambda: count)
        assert masking.default_threads() == threads


def test_workers_cut_whole_blocks_one_part_per_thread_on_named_threads():
    def parts(threads, n, block=4):
        with masking.Workers(MaskingOptions(threads=threads, block=block)) as w:
            return w.map_parts(lambda lo, hi: (lo, hi, threading.current_thread().name), n)

    main = threading.current_thread().name
    assert parts(1, 100) == [(0, 100, main)]  # one thread: inline, one part
    assert parts(3, 7) == [(0, 7, main)]  # under two blocks: not worth a split
    got = parts(2, 8)  # exactly two blocks: split
    assert [p[:2] for p in got] == [(0, 4), (4, 8)]
    assert all(p[2].startswith("mask-worker") for p in got)
    assert [p[:2] for p in parts(3, 12)] == [(0, 4), (4, 8), (8, 12)]
    assert [p[:2] for p in parts(3, 10)] == [(0, 4), (4, 8), (8, 10)]  # the last block is short
    assert [p[:2] for p in parts(4, 9)] == [(0, 4), (4, 8), (8, 9)]  # no empty part for a 4th thread
    assert [p[:2] for p in parts(3, 5, block=1000)] == [(0, 5)]


def test_workers_run_at_most_their_threads_at_once():
    lock, running, peak = threading.Lock(), [0], [0]

    def task(i):
        def run():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            threading.Event().wait(0.02)
            with lock:
                running[0] -= 1
            return i
        return run

    with masking.Workers(MaskingOptions(threads=2)) as w:
        assert list(w.ordered(task(i) for i in range(12))) == list(range(12))
    assert 1 <= peak[0] <= 2


def test_pattern_and_ratio_inputs_and_their_errors():
    assert [p.pattern for p in masking.compile_patterns(r"a\.b", "include")] == [r"a\.b"]  # one regex
    with pytest.raises(ValueError, match=r"invalid exclude regex '\('"):
        masking.name_filter(None, ["("])
    with pytest.raises(ValueError, match=r"invalid include regex '\['"):
        masking.name_filter(["["], None)
    assert masking.validate_ratios(0.25) == [0.25]  # one number
    assert math.copysign(1.0, masking.validate_ratios([-0.0])[0]) == 1.0  # -0.0 -> +0.0
    with pytest.raises(ValueError, match="masking ratio 'x' is not a number"):
        masking.validate_ratios([0.1, "x"])
    with pytest.raises(ValueError, match="masking ratios 0.2 and 0.2 both map to directory masked_r0.20"):
        masking.validate_ratios([0.1, 0.2, 0.2])
    assert masking.validate_ratios([0.2, 0.2], unique_dirs=False) == [0.2, 0.2]


def test_select_bits_keys_limits_and_buckets():
    """Hand-made F32 patterns: k inside the second high-16 bucket (below it: the first bucket's
    count), k = n, k = 0 ignored, the bound on k named in the error, the first NaN pattern."""
    bits = np.array([0x00010002, 0x00000005, 0x00020000, 0x00000003, 0x80010001], np.uint32)
    pattern, at_most = masking.select_bits(bits, "F32", [0, 3, 4, 5])
    assert pattern == {3: 0x00010001, 4: 0x00010002, 5: 0x00020000}  # sign cleared
    assert at_most == {3: 3, 4: 4, 5: 5}
    with pytest.raises(ValueError, match="k = 7 > 5 entries"):
        masking.select_bits(bits, "F32", [1, 2, 7])
    for dtype, nan in (("F32", np.uint32(0x7F800001)), ("F16", np.uint16(0x7C01)), ("BF16", np.uint16(0x7F81))):
        b = np.array([1, 2, nan], nan.dtype)
        with pytest.raises(ValueError, match="NaN"):
            masking.select_bits(b, dtype, [3])
        assert masking.select_bits(b, dtype, [2])[0] == {2: 2}  # the NaN itself is never selected


def test_kth_smallest_where_a_neighbouring_partition_would_be_wrong():
    """numpy.partition at k-2 leaves a wrong value at k-1 for this permutation (seed 138, k =
    1000: found by search); the selection must partition at exactly k-1."""
    absw = np.random.default_rng(138).permutation(5000).astype(np.float32)
    assert masking._kth_smallest(absw.copy(), [1000]) == {1000: 999.0}
    assert masking._kth_smallest(absw.copy(), [4999, 1000, 3]) == {4999: 4998.0, 1000: 999.0, 3: 2.0}


def test_limit_of_negative_and_overflowing_thresholds(recwarn):
    assert masking.limit_of(-0.5, "F32") == masking.limit_of(-0.5, "BF16") == masking.limit_of(-1e-3, "F16") == -1
    assert masking.limit_of(1e6, "F16") == 0x7BFF  # above float16's largest finite: inf, then one below
    assert masking.limit_of(float("inf"), "F16") == 0x7C00
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no overflow warning


def test_mask_bits_into_a_pooled_buffer_and_at_an_offset():
    """Output into the buffer handed out (no new allocation); a part [lo, hi) of the tensor masks
    like the same slice masked alone, in several blocks, for the bit path and F64 alike."""
    class Pool:
        def __init__(self):
            self.given = []

        def get(self, nbytes):
            self.given.append(np.empty(nbytes + 8, np.uint8))
            return self.given[-1]

    g = torch.Generator().manual_seed(4)
    for torch_dtype, dtype in ((torch.float32, "F32"), (torch.float64, "F64"), (torch.bfloat16, "BF16")):
        bits, name, _ = masking._tensor_bits(torch.randn(101, generator=g).to(torch_dtype))
        limit = masking.limit_of(0.5, name)
        alone, _, zeros_alone = masking.mask_bits(bits[7:90].copy(), 0, 83, name, limit, block=83)
        pool = Pool()
        out, base, zeros = masking.mask_bits(bits, 7, 90, name, limit, block=10, buffers=pool)
        assert base is pool.given[-1] and np.shares_memory(out, base)
        assert np.array_equal(out, alone) and zeros == zeros_alone
        assert (zeros is None) == (dtype != "F64")


def test_mask_tensor_keeps_float8_and_odd_sizes():
    """float8 is widened to float32 to mask and written back as float8; a tensor of an odd number
    of elements keeps its shape."""
    w8 = torch.tensor([0.5, -0.25, 2.0, -0.0625, 1.0, 0.125, -4.0], dtype=torch.float8_e4m3fn)
    got = mask_tensor(w8, 0.25)
    assert got.dtype == torch.float8_e4m3fn
    assert got.to(torch.float32).tolist() == [0.5, 0.0, 2.0, 0.0, 1.0, 0.0, -4.0]
    w = torch.tensor([[0.5, -0.1, 0.3], [0.2, -0.7, 0.05], [0.9, 0.0, -0.4]], dtype=torch.bfloat16)
    got = mask_tensor(w, 0.3)
    assert got.shape == (3, 3) and got.dtype == torch.bfloat16
    assert torch.equal(got, torch.where(w.float().abs() > 0.3, w, torch.zeros_like(w)))


def test_sparsity_is_zeros_over_elements_and_missing_only_for_an_empty_tensor():
    """A one-element tensor (a scale, a bias of width 1) has a sparsity of 0 or 1; only an empty
    tensor has none (no division by zero)."""
    rows = [dict.fromkeys(masked_teacher.STATS_COLUMNS) | {"name": n, "numel": numel, "zeros": zeros, "threshold": None}
            for n, numel, zeros in (("empty", 0, 0), ("one", 1, 1), ("one_kept", 1, 0), ("four", 4, 1))]
    stats = masked_teacher._stats_frame(rows)
    assert pd.isna(stats.sparsity[0]) and stats.sparsity[1:].tolist() == [1.0, 0.0, 0.25]
