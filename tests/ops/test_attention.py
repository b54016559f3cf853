"""Attention against ONNX's reference on seeded random inputs: masks, caches, GQA, softcap."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln.backend
from tests.ops.reference import assert_close, node_model, run_both

RNG_SEED = 7


def _qkv(rng, batch, q_heads, kv_heads, q_len, kv_len, head, v_head=None):
    q = rng.standard_normal((batch, q_heads, q_len, head)).astype(np.float32)
    k = rng.standard_normal((batch, kv_heads, kv_len, head)).astype(np.float32)
    v = rng.standard_normal((batch, kv_heads, kv_len, v_head or head)).astype(np.float32)
    return q, k, v


CASES = {
    "plain": dict(shape=(2, 3, 3, 4, 5, 8), attrs={}),
    "gqa_scaled": dict(shape=(1, 6, 2, 3, 7, 4), attrs={"scale": 0.3}),
    "v_head_size": dict(shape=(2, 2, 2, 4, 4, 8, 6), attrs={}),
    "causal_square": dict(shape=(2, 2, 2, 5, 5, 4), attrs={"is_causal": 1}),
    "softcap": dict(shape=(1, 2, 2, 3, 6, 4), attrs={"softcap": 1.5}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_4d(name: str) -> None:
    case = CASES[name]
    rng = np.random.default_rng(RNG_SEED)
    q, k, v = _qkv(rng, *case["shape"])
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], **case["attrs"])
    assert_close(*run_both(node, {"q": q, "k": k, "v": v}, 23))


@pytest.mark.parametrize("mask_rank", [2, 3, 4])
@pytest.mark.parametrize("boolean", [False, True])
def test_attention_masks_and_cache(mask_rank: int, boolean: bool) -> None:
    rng = np.random.default_rng(mask_rank)
    batch, heads, q_len, past, new = 2, 4, 3, 4, 3
    q, k, v = _qkv(rng, batch, heads, 2, q_len, new, 8)
    past_k = rng.standard_normal((batch, 2, past, 8)).astype(np.float32)
    past_v = rng.standard_normal((batch, 2, past, 8)).astype(np.float32)
    # a mask shorter than the keys: the rest is masked
    shape = [batch, heads, q_len, past + new - 1][-mask_rank:]
    if mask_rank == 3:
        shape[0] = heads
    if boolean:
        mask = rng.random(shape) > 0.3
    else:
        mask = np.where(rng.random(shape) > 0.3, rng.standard_normal(shape), -np.inf)
        mask = mask.astype(np.float32)
    node = helper.make_node("Attention", ["q", "k", "v", "m", "pk", "pv"],
                            ["y", "present_k", "present_v", "scores"],
                            is_causal=1, qk_matmul_output_mode=2)
    feeds = {"q": q, "k": k, "v": v, "m": mask, "pk": past_k, "pv": past_v}
    assert_close(*run_both(node, feeds, 23))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_score_outputs(mode: int) -> None:
    rng = np.random.default_rng(mode)
    q, k, v = _qkv(rng, 1, 2, 2, 4, 4, 4)
    mask = np.where(rng.random((4, 4)) > 0.5, 0.0, -np.inf).astype(np.float32)
    mask[1] = -np.inf  # a fully masked row: zeros in Y and in the probabilities
    attrs = {"qk_matmul_output_mode": mode}
    if mode == 1:
        attrs["softcap"] = 2.0
    node = helper.make_node("Attention", ["q", "k", "v", "m"], ["y", "", "", "s"], **attrs)
    assert_close(*run_both(node, {"q": q, "k": k, "v": v, "m": mask}, 23))


def test_attention_3d_inputs() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 5, 6 * 4)).astype(np.float32)
    k = rng.standard_normal((2, 7, 2 * 4)).astype(np.float32)
    v = rng.standard_normal((2, 7, 2 * 3)).astype(np.float32)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=6, kv_num_heads=2)
    assert_close(*run_both(node, {"q": q, "k": k, "v": v}, 23))


def test_attention_external_cache_lengths() -> None:
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 3, 2, 2, 2, 6, 4)
    lengths = np.array([6, 4, 2], dtype=np.int64)
    node = helper.make_node("Attention", ["q", "k", "v", "", "", "", "n"], ["y"], is_causal=1)
    assert_close(*run_both(node, {"q": q, "k": k, "v": v, "n": lengths}, 24))


@pytest.mark.parametrize(("left", "right", "causal"), [(1, 2, 0), (2, -1, 1), (0, 0, 0)])
def test_attention_sliding_window(left: int, right: int, causal: int) -> None:
    rng = np.random.default_rng(10 + left + 3 * right)
    q, k, v = _qkv(rng, 1, 2, 1, 5, 5, 4)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], left_window_size=left,
                            right_window_size=right, is_causal=causal)
    assert_close(*run_both(node, {"q": q, "k": k, "v": v}, 25))


def test_attention_3d_without_heads_is_refused() -> None:
    x = np.zeros((1, 2, 8), np.float32)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"])
    model = node_model(node, {"q": x, "k": x, "v": x}, ["y"], 23)
    with pytest.raises(Exception, match="q_num_heads and kv_num_heads"):
        kiln.backend.prepare(model).run([x, x, x])
