"""Which quantized layers to pin to the fallback precision, counting the quantize steps
that precision boundaries add (TensorRT counts its reformatting layers the same way).

Layers timed one by one miss what a choice costs between them: a layer left in FP16 among
INT8 neighbours makes its producer write floats and adds a Quantize step for every INT8
reader of a tensor that has a float side; a Quantize over a 64x256x56x56 activation costs
more than most layers gain in INT8. The model here: each activation tensor between
quantized layers costs one quantize step (its elements times the per-element time of the
quantize steps the INT8 engine ran) when it has INT8 readers and a float producer or float
readers. A local search flips single layers from the per-layer choice while the modelled
total falls; the whole-engine timing in precision_choice still decides between engines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.runtime.profile import LayerTime

# QAttention is timed and pinned like the others; its q, k and v come through views of
# its GEMM's output, which add no quantize step, so it adds no boundary below
QUANTIZED_OPS = ("QConv", "QGemm", "QAttention")
ACTIVATION_INPUTS = (0, 2)  # QConv/QGemm: input, weight, residual


@dataclass(frozen=True)
class Tensor:
    elements: int
    producer: str | None  # a quantized layer, or None: a Quantize step from floats
    readers: tuple[str, ...]  # quantized layers reading it


@dataclass(frozen=True)
class Boundaries:
    ms_per_element: float
    tensors: tuple[Tensor, ...]

    def cost(self, pinned: set[str]) -> float:
        """Milliseconds of the quantize steps a set of pinned layers leaves in the engine."""
        total = 0.0
        for t in self.tensors:
            low = [r for r in t.readers if r not in pinned]
            floats = t.producer is None or t.producer in pinned or len(low) < len(t.readers)
            if low and floats:
                total += t.elements * self.ms_per_element
        return total

    def total(self, times: dict[str, tuple[float, float]], pinned: set[str]) -> float:
        """Modelled milliseconds: each layer in its precision, plus the boundaries."""
        layers = sum(f if name in pinned else q for name, (q, f) in times.items())
        return layers + self.cost(pinned)

    def search(self, times: dict[str, tuple[float, float]], start: Iterable[str]) -> list[str]:
        """The pinned set that single flips from `start` bring lowest (times: name ->
        (quantized ms, fallback ms))."""
        pinned = set(start)
        best = self.total(times, pinned)
        improved = True
        while improved:
            improved = False
            for name in sorted(times):
                trial = pinned ^ {name}
                ms = self.total(times, trial)
                if ms < best - 1e-9:
                    pinned, best, improved = trial, ms, True
        return sorted(pinned)


def boundaries(layers: list[dict], timed: list[LayerTime], names: dict[str, str]
               ) -> Boundaries | None:
    """The tensors between an all-quantized engine's quantized layers (`layers`, as
    Engine.layers() lists them; `timed` its profile; `names`: layer -> model layer name),
    priced by its own quantize steps; None where it ran none to price them by."""
    by_name = {t.name: t for t in timed}
    steps = [by_name[layer["name"]] for layer in layers
             if layer["op"] == "Quantize" and layer["name"] in by_name]
    elements = sum(t.elements for t in steps)
    if not elements:
        return None
    producers = {out: layer for layer in layers for out in layer.get("outputs") or [] if out}
    readers: dict[str, list[str]] = {}
    for layer in layers:
        if layer["op"] in QUANTIZED_OPS:
            inputs = layer.get("inputs") or []
            for i in ACTIVATION_INPUTS:
                if i < len(inputs) and inputs[i]:
                    readers.setdefault(inputs[i], []).append(names[layer["name"]])
    tensors = []
    for tensor, reading in readers.items():
        source = producers.get(tensor)
        if source is None or source["op"] not in (*QUANTIZED_OPS, "Quantize"):
            continue  # a graph input or a layer of its own precision: the same either way
        size = by_name[source["name"]].elements if source["name"] in by_name else 0
        producer = names[source["name"]] if source["op"] in QUANTIZED_OPS else None
        tensors.append(Tensor(size, producer, tuple(reading)))
    return Boundaries(sum(t.ms for t in steps) / elements, tuple(tensors))
