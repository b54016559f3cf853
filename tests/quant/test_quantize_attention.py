"""INT8 attention (kiln/quant/quantize_attention.py, kiln/ops/qattention.py) built on the
CPU: the graph it makes (INT8 q/k/v from the QKV GEMM, the attention requantizing for
the output projection), the reference arithmetic against float attention, the cases
that stay in floating point with their reason, and accuracy on a small transformer
trained during the test on scikit-learn's digits (within one point of FP32)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.ops.fused import attention
from kiln.ops.qattention import qattention
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import digits_split, train_classifier


class Encoder(nn.Module):
    """One post-norm encoder layer written as Hugging Face's BERT exports it (separate
    q/k/v projections, views to heads, an additive padding mask), on token features."""

    def __init__(self, features: int = 8, width: int = 64, heads: int = 2, tokens: int = 8,
                 classes: int = 10, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.embed = nn.Linear(features, width)
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.1)
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff1, self.ff2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x, mask):
        h = self.embed(x) + self.position
        b, s, w = h.shape
        d = w // self.heads

        def split(t):
            return t.view(b, s, self.heads, d).transpose(1, 2)

        scores = split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / math.sqrt(d)
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
        if self.causal:
            scores = scores + torch.full((s, s), -10000.0).triu(1)
        context = (scores.softmax(-1) @ split(self.v(h))).transpose(1, 2).reshape(b, s, w)
        h = self.norm1(h + self.out(context))
        h = self.norm2(h + self.ff2(nn.functional.gelu(self.ff1(h))))
        return self.head(h.mean(1))


def _export(model: nn.Module, x: torch.Tensor, path) -> str:
    buffer = io.BytesIO()
    mask = torch.ones(x.shape[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x, mask), buffer, dynamo=False, opset_version=17,
                          input_names=["x", "mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "mask": {0: "n"}})
    path.write_bytes(buffer.getvalue())
    return str(path)


def _feeds(rng, batch: int, tokens: int = 8, features: int = 8, pad: int = 0):
    mask = np.ones((batch, tokens), np.float32)
    if pad:
        mask[:, tokens - pad:] = 0
    return {"x": rng.standard_normal((batch, tokens, features)).astype(np.float32),
            "mask": mask}


def _build(path: str, calib: list[dict], **extra):
    return build_engine(path, BuilderConfig(precision="int8", device="cpu",
                                            optimization_level=0,
                                            calibrator=Calibrator(calib), **extra))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(3)
    model = Encoder()
    path = _export(model, torch.randn(2, 8, 8), tmp_path_factory.mktemp("qa") / "enc.onnx")
    rng = np.random.default_rng(0)
    calib = [_feeds(rng, 4, pad=p) for p in (0, 2, 3)]
    return path, calib, _build(path, calib), model


def _layer(engine, op: str) -> dict:
    return next(layer for layer in engine.layers() if layer["op"] == op)


def test_the_attention_reads_int8_and_requantizes_for_the_projection(random_model):
    engine = random_model[2]
    assert engine.plan["build"]["quantization"]["attention_int8"] == "1 of 1"
    att = _layer(engine, "QAttention")
    assert att["precision"] == "int8"
    assert all(att["attrs"][f"{t}_scale"] > 0 for t in "qkv")
    layers = engine.layers()
    made_by = {out: layer for layer in layers for out in layer["outputs"] or [] if out}
    qkv = [layer for layer in layers if layer["op"] == "QGemm"
           and layer["attrs"].get("out_scale") == 1.0]
    assert len(qkv) == 1  # the merged q/k/v projection writes INT8 with folded scales
    projection = next(layer for layer in layers if layer["op"] == "QGemm"
                      and made_by[layer["inputs"][0]]["op"] == "Reshape"
                      and made_by[made_by[layer["inputs"][0]]["inputs"][0]]["op"]
                      == "QAttention")
    assert att["attrs"]["out_scale"] == projection["attrs"]["a_scale"]
    assert not any(layer["op"] == "Attention" for layer in layers)
    # no quantize step between the projection, the attention and the next projection
    assert not any(layer["op"] == "Quantize" and made_by.get(layer["inputs"][0], {}).get("op") in (
        "QGemm", "Split", "Reshape", "QAttention") for layer in layers)


@pytest.mark.parametrize("batch,pad", [(1, 0), (3, 2), (5, 7)])
def test_int8_attention_engine_stays_close_to_onnx_runtime(random_model, batch, pad):
    path, _, engine, _ = random_model
    feeds = _feeds(np.random.default_rng(batch * 10 + pad), batch, pad=pad)
    want = ort.InferenceSession(path).run(None, feeds)[0].ravel()
    got = np.asarray(ExecutionContext(engine).run(feeds)["y"], np.float64).ravel()
    assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.995
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_folded_scales_give_each_of_q_k_v_its_own_threshold(random_model):
    """The merged GEMM requantizes with scale 1: each output column's weight factor and
    bias are the column's own over the scale of its piece (q, k or v)."""
    engine, model = random_model[2:]
    att = _layer(engine, "QAttention")
    scales = [att["attrs"][f"{t}_scale"] for t in "qkv"]
    assert len(set(scales)) == 3
    qkv = next(layer for layer in engine.layers() if layer["op"] == "QGemm"
               and layer["attrs"].get("out_scale") == 1.0)
    folded = {k: engine.tensors[qkv["attrs"][k]["$tensor"]].double().reshape(3, -1).numpy()
              for k in ("w_scale", "bias")}
    for i, (linear, scale) in enumerate(zip((model.q, model.k, model.v), scales)):
        w_scale = linear.weight.detach().abs().amax(1).double().numpy() / 127
        np.testing.assert_allclose(folded["w_scale"][i] * scale, w_scale, rtol=1e-5)
        np.testing.assert_allclose(folded["bias"][i] * scale,
                                   linear.bias.detach().double().numpy(), rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.parametrize("shape,layout", [((2, 3, 16, 32), "bhsd"), ((1, 20, 2, 64), "bshd"),
                                          ((3, 2, 9, 32), "bhsd")], ids=str)
def test_reference_is_float_attention_up_to_the_probability_steps(shape, layout):
    gen = torch.Generator().manual_seed(sum(shape))
    floats = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    scales = [float(t.abs().max()) / 127 for t in floats]
    q, k, v = ((t / s).round().clamp(-128, 127).to(torch.int8) for t, s in zip(floats, scales))
    seq = shape[1] if layout == "bshd" else shape[2]
    mask = torch.zeros(shape[0], 1, 1, seq)
    mask[0, ..., seq // 2:] = -10000.0
    got = qattention(q, k, v, mask, q_scale=scales[0], k_scale=scales[1], v_scale=scales[2],
                     q_layout=layout, k_layout=layout, v_layout=layout, out_layout=layout)
    deq = [t.double() * s for t, s in zip((q, k, v), scales)]
    want = attention(*deq, mask.double(), q_layout=layout, k_layout=layout, v_layout=layout,
                     out_layout=layout)
    # each probability is off by at most half a step (1/254): the output by at most
    # seq / 254 * max|v|, far less in practice as the errors are independent
    bound = seq / 254 * float(deq[2].abs().max())
    error = (got.double() - want).abs()
    assert error.max() < bound and error.mean() < 0.05 * bound


def test_reference_zeroes_rows_masked_entirely_and_requantizes():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randint(-128, 128, (2, 2, 6, 32), generator=gen, dtype=torch.int8)
               for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, 2] = False  # query row 2 of batch 1 sees no key
    out = qattention(q, k, v, mask, q_scale=0.01, k_scale=0.01, v_scale=0.02,
                     out_scale=0.01)
    assert out.dtype == torch.int8
    assert (out[1, :, 2] == 0).all() and (out[0, :, 2] != 0).any()
    floats = qattention(q, k, v, mask, q_scale=0.01, k_scale=0.01, v_scale=0.02,
                        out_dtype="fp32")
    np.testing.assert_array_equal(out.numpy(), (floats / 0.01).round().clamp(-128, 127)
                                  .to(torch.int8).numpy())


def test_layer_precisions_and_causal_attention_stay_float(random_model, tmp_path):
    path, calib, engine, _ = random_model
    name = _layer(engine, "QAttention")["name"]
    forced = _build(path, calib, layer_precisions={name: "fp32"})
    quant = forced.plan["build"]["quantization"]
    assert quant["attention_int8"] == "0 of 1"
    assert "--layerPrecisions" in quant["skipped"][name]
    assert _layer(forced, "Attention")["precision"] != "int8"
    torch.manual_seed(4)
    causal = _export(Encoder(causal=True), torch.randn(2, 8, 8), tmp_path / "causal.onnx")
    built = _build(causal, calib)
    attention_ops = [layer["op"] for layer in built.layers() if "Attention" in layer["op"]]
    assert "QAttention" not in attention_ops
    feeds = _feeds(np.random.default_rng(1), 2)
    want = ort.InferenceSession(causal).run(None, feeds)[0]
    got = ExecutionContext(built).run(feeds)["y"]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_odd_head_sizes_stay_float_with_the_reason(tmp_path):
    torch.manual_seed(5)
    path = _export(Encoder(width=48, heads=1), torch.randn(2, 8, 8), tmp_path / "h48.onnx")
    rng = np.random.default_rng(2)
    engine = _build(path, [_feeds(rng, 4) for _ in range(2)])
    quant = engine.plan["build"]["quantization"]
    assert quant["attention_int8"] == "0 of 1"
    assert any("head size 48" in why for why in quant["skipped"].values())


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x_train, x_test, y_train, y_test = digits_split()  # 8 rows of 8 pixels: 8 tokens
    torch.manual_seed(0)
    ones = torch.ones(64, 8)
    model = train_classifier(Encoder(), x_train, y_train, epochs=12,
                             logits=lambda model, x: model(x, ones[:len(x)]))
    xt = torch.from_numpy(x_train)
    path = _export(model, xt[:2], tmp_path_factory.mktemp("digits") / "encoder.onnx")
    return path, x_train, x_test, y_test


def _accuracy(engine, x, y) -> float:
    feeds = {"x": x, "mask": np.ones(x.shape[:2], np.float32)}
    return float((ExecutionContext(engine).run(feeds)["y"].argmax(1) == y).mean())


def test_trained_transformer_keeps_its_accuracy_with_int8_attention(digits):
    path, x_train, x_test, y_test = digits
    fp32 = _accuracy(build_engine(path, BuilderConfig(device="cpu", optimization_level=0)),
                     x_test, y_test)
    assert fp32 > 0.9  # the network learned the task
    calib = [{"x": x_train[i:i + 128], "mask": np.ones((len(x_train[i:i + 128]), 8),
                                                       np.float32)}
             for i in range(0, len(x_train), 128)]
    engine = _build(path, calib)
    assert engine.plan["build"]["quantization"]["attention_int8"] == "1 of 1"
    int8 = _accuracy(engine, x_test, y_test)
    assert int8 >= fp32 - 0.01, f"INT8 {int8:.4f} vs FP32 {fp32:.4f}"


def test_cli_build_says_which_attentions_run_in_int8(random_model, tmp_path, capsys):
    from kiln.cli.main import main

    path, calib = random_model[:2]
    for i, batch in enumerate(calib):
        np.savez(tmp_path / f"batch{i}.npz", **batch)
    code = main(["build", path, "--int8", f"--calib={tmp_path}", "--device=cpu",
                 f"--saveEngine={tmp_path / 'enc.kiln'}"])
    captured = capsys.readouterr()
    assert code == 0 and "attention in INT8: 1 of 1" in captured.err + captured.out


class MultiheadEncoder(nn.Module):
    """torch's nn.MultiheadAttention (one packed q/k/v projection, picked apart by
    Reshape, Unsqueeze, Transpose, Squeeze and Gather in the export) with a padding mask."""

    def __init__(self, features: int = 8, width: int = 64, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x, mask):
        h = self.embed(x)
        a, _ = self.attention(h, h, h, key_padding_mask=mask < 0.5, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


@pytest.mark.parametrize("batch", [2, 5])
def test_torch_multihead_attention_runs_in_int8_at_a_fixed_batch(tmp_path, batch):
    """The q, k and v slices of the packed projection are found through the export's
    views; a profile pins the batch, so every shape on the way is known."""
    torch.manual_seed(batch)
    model = MultiheadEncoder()
    path = _export(model, torch.randn(2, 8, 8), tmp_path / "mha.onnx")
    rng = np.random.default_rng(batch)
    calib = [_feeds(rng, batch, pad=p) for p in (0, 2, 3)]
    fixed = [{"opt": {"x": [batch, 8, 8], "mask": [batch, 8]}}]
    engine = _build(path, calib, profiles=fixed)
    assert engine.plan["build"]["quantization"]["attention_int8"] == "1 of 1"
    scales = [_layer(engine, "QAttention")["attrs"][f"{t}_scale"] for t in "qkv"]
    packed = next(layer for layer in engine.layers() if layer["op"] == "QGemm"
                  and layer["attrs"].get("out_scale") == 1.0)
    folded = engine.tensors[packed["attrs"]["w_scale"]["$tensor"]].double().reshape(3, -1)
    weight = model.attention.in_proj_weight.detach().double().reshape(3, 64, 64)
    for piece, scale in zip(range(3), scales):  # q, k, v: each its own rows of the weight
        np.testing.assert_allclose(folded[piece].numpy() * scale,
                                   weight[piece].abs().amax(1).numpy() / 127, rtol=1e-5)
    float_attention = _build(path, calib, profiles=fixed, layer_precisions={
        _layer(engine, "QAttention")["name"]: "fp32"})
    feeds = _feeds(np.random.default_rng(batch + 1), batch, pad=3)
    want = ort.InferenceSession(path).run(None, feeds)[0].ravel()
    for built in (engine, float_attention):
        got = np.asarray(ExecutionContext(built).run(feeds)["y"], np.float64).ravel()
        assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.995
        assert np.abs(got - want).max() < 0.15 * np.abs(want).max()


def _stays_float(make_model, seed: int, batch: int, why: str, tmp_path):
    """Builds the model in INT8 (padding 0 and 2 in calibration) and checks that its one
    attention stayed in float for the reason `why`; (path, engine)."""
    torch.manual_seed(seed)
    path = _export(make_model(), torch.randn(2, 8, 8), tmp_path / "model.onnx")
    rng = np.random.default_rng(seed)
    engine = _build(path, [_feeds(rng, batch, pad=p) for p in (0, 2)])
    quant = engine.plan["build"]["quantization"]
    assert quant["attention_int8"] == "0 of 1"
    assert any(why in reason for reason in quant["skipped"].values())
    return path, engine


def test_torch_multihead_attention_with_a_dynamic_batch_stays_float(tmp_path):
    """Without a fixed batch the export's views have no known shapes to follow."""
    _stays_float(MultiheadEncoder, 6, 3, "through views", tmp_path)


class GatedEncoder(Encoder):
    """A fourth projection of the same input, merged with q, k and v into one GEMM."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(64, 64)

    def forward(self, x, mask):
        h = self.embed(x) + self.position
        return super().forward(x, mask) + self.gate(h).mean(1)[:, :10]


def test_a_qkv_gemm_that_makes_other_tensors_stays_float(tmp_path):
    path, engine = _stays_float(GatedEncoder, 8, 4, "also makes other tensors", tmp_path)
    feeds = _feeds(np.random.default_rng(9), 3, pad=1)
    want = ort.InferenceSession(path).run(None, feeds)[0]
    got = ExecutionContext(engine).run(feeds)["y"]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
