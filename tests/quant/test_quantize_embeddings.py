"""Embedding tables in INT8, weights only (kiln/quant/quantize_embeddings.py): a small
text classifier with a large word table, built INT8 on the CPU, keeps ONNX Runtime's
answers; its table is stored as int8 with a scale per row, the engine's weights fall to
about a quarter of FP32's, and --layerPrecisions keeps a table float."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.ops.quantized import gather_dequantize
from kiln.quant import Calibrator
from kiln.quant.quantize_embeddings import MIN_ELEMENTS, per_row
from kiln.runtime import ExecutionContext

VOCAB, WIDTH, TOKENS = 1 << 14, 64, 12  # 1M table entries: just large enough


class TextClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.words = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(TOKENS, WIDTH)
        self.kinds = nn.Embedding(3, WIDTH)  # a small table: stays float
        self.norm = nn.LayerNorm(WIDTH)
        self.hidden = nn.Linear(WIDTH, 128)
        self.head = nn.Linear(128, 6)

    def forward(self, ids):
        h = self.norm(self.words(ids) + self.positions.weight + self.kinds(ids % 3))
        return self.head(torch.relu(self.hidden(h)).mean(1))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TextClassifier().eval(), (torch.zeros(2, TOKENS, dtype=torch.long),),
                          buffer, dynamo=False, opset_version=17, input_names=["ids"],
                          output_names=["y"], dynamic_axes={"ids": {0: "n"}})
    path = tmp_path_factory.mktemp("emb") / "text.onnx"
    path.write_bytes(buffer.getvalue())
    return str(path)


def _ids(rng, batch: int) -> np.ndarray:
    ids = rng.integers(0, VOCAB, (batch, TOKENS))
    ids[:, 0] = -1  # ONNX Gather counts negative indices from the end
    return ids


def _build(path: str, **extra):
    rng = np.random.default_rng(0)
    calib = Calibrator([{"ids": _ids(rng, 8)} for _ in range(3)])
    return build_engine(path, BuilderConfig(precision="int8", device="cpu", calibrator=calib,
                                            optimization_level=0, **extra))


def _table_layer(engine) -> dict | None:
    return next((layer for layer in engine.layers() if layer["op"] == "GatherDequantize"),
                None)


@pytest.mark.parametrize("batch", [1, 5])
def test_int8_table_keeps_the_answers(model, batch):
    engine = _build(model)
    # the word table is quantized; the 3-row table of kinds is under MIN_ELEMENTS
    assert VOCAB * WIDTH >= MIN_ELEMENTS > 3 * WIDTH
    assert engine.plan["build"]["quantization"]["embeddings_int8"] == "1 of 1"
    assert [layer["op"] for layer in engine.layers()].count("Gather") == 1
    layer = _table_layer(engine)
    assert layer is not None
    table = engine.tensors[f"const/{layer['inputs'][0]}"]
    assert table.dtype == torch.int8 and tuple(table.shape) == (VOCAB, WIDTH)
    fp32 = build_engine(model, BuilderConfig(precision="fp32", device="cpu"))
    assert engine.weight_bytes() < 0.3 * fp32.weight_bytes()
    ids = _ids(np.random.default_rng(batch), batch)
    got = np.asarray(ExecutionContext(engine).run({"ids": ids})["y"], np.float64)
    want = ort.InferenceSession(model).run(None, {"ids": ids})[0].astype(np.float64)
    assert got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want) > 0.995
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8


def test_layer_precisions_keep_the_table_float(model):
    import onnx

    gather = next(n.name for n in onnx.load(model).graph.node if n.op_type == "Gather")
    engine = _build(model, layer_precisions={gather: "fp32"})
    assert _table_layer(engine) is None
    assert engine.plan["build"]["quantization"]["embeddings_int8"] == "0 of 1"


@pytest.mark.parametrize("shape", [(7, 5), (300, 16)])
def test_rows_come_back_within_half_a_step(shape):
    rng = np.random.default_rng(shape[0])
    table = (rng.standard_normal(shape) * rng.uniform(0.01, 5, (shape[0], 1))).astype(
        np.float32)
    table[1] = 0.0  # a row of zeros: zeros back
    q, scales = per_row(table)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127 and scales.shape == (shape[0], 1)
    ids = torch.from_numpy(rng.integers(-shape[0], shape[0], (3, 4)))
    got = gather_dequantize(torch.from_numpy(q), torch.from_numpy(scales), ids)
    want = torch.from_numpy(table)[ids]
    step = torch.from_numpy(scales)[ids]
    assert got.shape == want.shape == (3, 4, shape[1])
    assert bool(((got - want).abs() <= step / 2 + 1e-6).all())
