"""The FP16 policy: which type each layer computes in. The rewrite lives in `precision.py`.

Rules, in order (the first that applies decides):

1. `--layerPrecisions` overrides (node name -> fp32/fp16) win.
2. Metadata ops (Shape, Size, Cast) read their input in whatever type it has: no cast.
3. Compute layers (Conv, ConvTranspose, MatMul, Gemm, Einsum; kiln's FusedConv,
   FusedGemm and Attention) run in fp16: they are where the time goes, and torch
   accumulates their products in fp32 on the CPU (as cuBLAS/cuDNN do by default), so
   fp16 costs one rounding of the result.
4. Sensitive and unknown ops run in fp32: Softmax, normalizations that compute
   statistics (not kiln's fused LayerNorm: fp16 in and out, fp32 statistics),
   reductions (sums overflow fp16 at 65504),
   Exp/Log/Pow and squares (x * x, also inside a fused element-wise program),
   trigonometry, recurrent cells, and every op whose output type an attribute fixes.
5. Element-wise and data-movement ops follow their inputs with type promotion, as
   torch's autocast does for binary ops: any fp32 non-constant input makes the op fp32
   (fp16 + fp32 -> fp32), so values that are fp32 for a reason (graph inputs, outputs of
   sensitive ops, shape-derived grids, state) are not silently narrowed. Constants are
   "weak" and take the op's type.
6. The output tail runs in fp32: nodes after which no compute layer runs on the way to a
   graph output (decode arithmetic, output activations, post-processing). Outputs are
   fp32 anyway, and the tail is where absolute precision matters: pixel coordinates
   near 600 have an fp16 spacing of 0.5. It is cheap: output-sized element-wise work.
7. A layer whose constant input does not survive conversion to fp16 (a finite value
   beyond 65504, or a constant so small that rounding changes it by more than fp16's
   relative precision, like an epsilon of 1e-12) runs in fp32. A compute layer's bias
   only has to fit (its rounding stays below the result's; see BIAS_INPUTS).

Inputs read on the host (shapes, axes, Resize scales) and the affine parameters of
BatchNormalization (fp32 for fp16 data, as cuDNN takes them) keep the model's type.
A pass that creates a new kind of node may class it with `node.meta["precision_class"]`
("fp16", "follow", "fp32" or "any"); `meta["fp16_ok"] = False` keeps a kiln node fp32.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node, Value
from kiln.ops import registry

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
METADATA_OPS = frozenset({"Shape", "Size", "Cast"})
FOLLOW_OPS = frozenset({
    # element-wise
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Softsign", "Softplus", "Gelu", "Mish", "ThresholdedRelu", "Clip",
    "Erf", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Sum", "Mean", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Where", "IsNaN", "IsInf",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    # per-channel affine (statistics are constants; see PARAMETER_INPUTS)
    "BatchNormalization",
    # data movement and selection: exact in any type
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity",
    "DepthToSpace", "SpaceToDepth", "Resize", "Upsample", "ReverseSequence", "Compress",
    "MaxPool", "GlobalMaxPool", "ArgMax", "ArgMin", "TopK", "ReduceMax", "ReduceMin",
    # averages accumulate in fp32 in torch and cannot exceed their inputs' range
    "AveragePool", "GlobalAveragePool",
})
# kiln's fused layers (kiln/ops/fused.py), by what they replace: FusedConv/FusedGemm/
# Attention are convolutions and matrix products; Gelu and Elementwise are element-wise
# chains. kiln's LayerNorm takes and returns fp16 but always computes its statistics in
# fp32 (its reference upcasts, torch's CUDA kernel accumulates in fp32), as TensorRT's
# normalization does: keeping the residual stream in fp32 instead would put a cast on
# each side of every GEMM of a transformer (measured: 17% of BERT-base at batch 32).
# Unknown kiln ops are compute layers unless their pass set meta["fp16_ok"] = False.
KILN_CLASSES = {"FusedConv": "fp16", "FusedGemm": "fp16", "Attention": "fp16",
                "LayerNorm": "fp16", "Gelu": "follow", "Elementwise": "follow"}
SENSITIVE_ELEMENTWISE = frozenset({"Exp", "Log", "Pow", "Square", "Cube", "Softplus"})
# Float inputs that keep the model's type whatever the layer computes in.
PARAMETER_INPUTS = {"BatchNormalization": frozenset({1, 2, 3, 4})}
# A compute layer's bias joins its fp32 accumulator: a bias that loses digits in fp16
# (values below fp16's normal range, like torchvision ViT's 1e-6-scale initialization)
# moves a result by at most 2**-25, under the result's own fp16 rounding unless it is
# smaller than 2**-15. Only overflow keeps such a layer in fp32 (TensorRT flushes too).
BIAS_INPUTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "FusedConv": 2, "FusedGemm": 2}

FP16_MAX = float(np.finfo(np.float16).max)
# a constant survives conversion when rounding moves it by at most fp16's relative
# precision (2**-10, one ulp at the top of a binade) of its largest magnitude
FP16_RELATIVE = 2.0 ** -10


def op_class(node: Node) -> str:
    """"fp16" (compute), "follow", "fp32" (sensitive or unknown) or "any" (metadata)."""
    declared = node.meta.get("precision_class")
    if declared is not None:  # a pass that makes a new kind of node may say
        return declared
    if node.domain == "kiln":
        return _kiln_class(node)
    if node.domain not in ("", "ai.onnx") or any(True for _ in node.subgraphs()):
        return "fp32"
    if node.op_type in COMPUTE_OPS:
        return "fp16"
    if node.op_type in METADATA_OPS:
        return "any"
    if is_square(node):  # x * x: a power, whose range is twice its input's
        return "fp32"
    if node.op_type in FOLLOW_OPS:
        return "follow"
    return "fp32"


def _kiln_class(node: Node) -> str:
    """kiln's fused layers are classed as the ops they replace."""
    cls = KILN_CLASSES.get(node.op_type, "fp16")
    if node.op_type == "Elementwise" and _program_is_sensitive(node.attrs.get("program", [])):
        return "fp32"
    return cls if node.meta.get("fp16_ok", True) else "fp32"


def _program_is_sensitive(program: list) -> bool:
    """An element-wise program computes in fp32 inside, but its result is stored in the
    node's type: a power, exponential or logarithm may not fit fp16 there."""
    for op, args, *_ in program:
        if op in SENSITIVE_ELEMENTWISE or (op == "Mul" and len(args) == 2 and args[0] == args[1]
                                           and isinstance(args[0], str)):
            return True
    return False


def is_square(node: Node) -> bool:
    inputs = node.inputs
    return (node.op_type == "Mul" and len(inputs) == 2 and inputs[0] is inputs[1]
            and inputs[0] is not None and not inputs[0].is_const)


def runs_compute(node: Node) -> bool:
    """Whether the node is a compute layer or holds one in its subgraphs."""
    if op_class(node) == "fp16":
        return True
    return any(runs_compute(n) for sub in node.subgraphs() for n in sub.walk_nodes())


def converted_inputs(node: Node) -> list[int]:
    """Indices of the float tensor inputs whose type follows the layer's precision."""
    kept = set(PARAMETER_INPUTS.get(node.op_type, ())) if not node.domain else set()
    kept |= set(host_inputs(node))
    return [i for i, v in enumerate(node.inputs)
            if v is not None and i not in kept and is_model_float(v)]


def host_inputs(node: Node) -> tuple[int, ...]:
    graph = node.graph
    opsets = graph.root().opsets if graph is not None else {}
    impl = registry.lookup(node.domain, node.op_type, registry.opset_of(opsets, node.domain))
    return impl.host_inputs if impl is not None else ()


def is_model_float(value: Value) -> bool:
    """A tensor the model types float32 (the only type the FP16 policy narrows)."""
    from kiln.ir import DType

    model = value.meta.get("model_dtype", value.dtype)
    return value.kind == "tensor" and model is DType.FLOAT and value.dtype in (
        DType.FLOAT, DType.FLOAT16)


def fits_fp16(array: np.ndarray, tiny_ok: bool = False) -> bool:
    """Whether converting a constant to fp16 keeps it (no overflow and, unless `tiny_ok`,
    no lost tiny values)."""
    finite = np.abs(array[np.isfinite(array)].astype(np.float64))
    if finite.size == 0:
        return True
    largest = float(finite.max())
    if largest > FP16_MAX:
        return False
    if largest == 0.0 or tiny_ok:
        return True
    error = np.abs(finite.astype(np.float16).astype(np.float64) - finite).max()
    return bool(error <= FP16_RELATIVE * largest)


def output_tail(graph: Graph) -> set[int]:
    """ids of nodes after which no compute layer runs before the graph's outputs.

    A node is in the tail when it is no compute layer (nor holds one in a subgraph) and
    every consumer of its results is in the tail or it is a graph output; consumers that
    only read metadata (Shape) do not count, and a consumer in another graph keeps it out.
    """
    outputs = {id(v) for v in graph.outputs}
    owners = _subgraph_owners(graph)
    tail: set[int] = set()
    for node in reversed(graph.nodes):
        if op_class(node) == "any" or runs_compute(node):
            continue
        reaches, blocked = False, False
        for value in node.outputs:
            if value is None:
                continue
            reaches |= id(value) in outputs
            for consumer in value.consumers:
                # a read inside an If/Loop body counts as a read by that node
                user = consumer if consumer.graph is graph else owners.get(id(consumer.graph))
                if user is not None and op_class(user) == "any":
                    continue
                if user is not None and id(user) in tail:
                    reaches = True
                else:
                    blocked = True
        if reaches and not blocked:
            tail.add(id(node))
    return tail


def _subgraph_owners(graph: Graph) -> dict[int, Node]:
    """id of every (nested) subgraph -> the node of `graph` that holds it."""
    owners: dict[int, Node] = {}
    for node in graph.nodes:
        for sub in node.subgraphs():
            owners.update({id(g): node for g in sub.walk_graphs()})
    return owners


def constants_fit(node: Node, indices: list[int]) -> bool:
    """Whether every constant among the given inputs survives conversion to fp16."""
    bias = BIAS_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx", "kiln") else None
    for i in indices:
        value = node.inputs[i]
        if value is not None and value.is_const and not _fits_cached(value, i == bias):
            return False
    return True


def _fits_cached(value: Value, tiny_ok: bool) -> bool:
    key = "fits_fp16_tiny_ok" if tiny_ok else "fits_fp16"
    fits = value.meta.get(key)
    if fits is None:
        fits = value.meta[key] = fits_fp16(np.asarray(value.const), tiny_ok)
    return fits
