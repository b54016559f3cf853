"""Automatic mixed precision: the smallest set of layers that must leave INT8/FP8 (or
FP16) for an engine to meet an accuracy target, found by bisection as Polygraphy's
`debug precision` does.

    result = find_precision_overrides(model, config, inputs, Metric.parse("cosine>=0.999"))
    config.layer_precisions.update(result.overrides)

The candidates are the engine's low-precision layers in network order. Bisection finds
the shortest prefix (and, separately, the shortest suffix) of them that, run in the
higher precision, meets the target; the shorter of the two is then pruned one layer at a
time (a layer whose return to low precision still meets the target is dropped), so the
answer is minimal: no layer in it can be removed alone. Outputs are compared with an
FP32 engine of the same model on the same inputs. Calibration runs once; every trial
build reuses its thresholds.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.build import BuilderConfig, build_engine
from kiln.build.precision_choice import calibrate_once, model_layer_name
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.quant.calibrators import Calibrator
from kiln.runtime import ExecutionContext

LOW = ("int8", "fp8", "fp16")
_METRIC = re.compile(r"^\s*(cosine|max_abs|mean_abs|top1)\s*(>=|<=)\s*([0-9.eE+-]+)\s*$")
_HIGHER_IS_BETTER = {"cosine": True, "top1": True, "max_abs": False, "mean_abs": False}


@dataclass(frozen=True)
class Metric:
    """`cosine>=0.999`, `top1>=1`, `max_abs<=0.01` or `mean_abs<=0.001`, over all outputs
    (the worst output counts). top1: the fraction of rows (last axis) whose argmax agrees."""

    name: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Metric:
        match = _METRIC.match(text)
        if not match:
            raise KilnError(f"--metric {text!r} is not a metric",
                            hint="use cosine>=0.999, top1>=1, max_abs<=0.01 or mean_abs<=1e-3")
        name, op, value = match.groups()
        if (op == ">=") != _HIGHER_IS_BETTER[name]:
            raise KilnError(f"--metric {text!r}: {name} is bounded with "
                            f"{'>=' if _HIGHER_IS_BETTER[name] else '<='}")
        return cls(name, float(value))

    def score(self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
        values = [_score(self.name, np.asarray(got[k], np.float64), np.asarray(v, np.float64))
                  for k, v in want.items() if np.asarray(v).dtype.kind == "f"]
        if not values:
            raise KilnError("the model has no float outputs to compare")
        return min(values) if _HIGHER_IS_BETTER[self.name] else max(values)

    def met(self, score: float) -> bool:
        return score >= self.bound if _HIGHER_IS_BETTER[self.name] else score <= self.bound

    def __str__(self) -> str:
        return f"{self.name}{'>=' if _HIGHER_IS_BETTER[self.name] else '<='}{self.bound:g}"


def _score(name: str, got: np.ndarray, want: np.ndarray) -> float:
    if name == "cosine":
        norm = np.linalg.norm(got) * np.linalg.norm(want)
        return float((got * want).sum() / norm) if norm else float(np.array_equal(got, want))
    if name == "top1":
        rows = want.reshape(-1, want.shape[-1]) if want.ndim else want.reshape(1, 1)
        return float((got.reshape(rows.shape).argmax(-1) == rows.argmax(-1)).mean())
    diff = np.abs(got - want)
    return float(diff.max() if name == "max_abs" else diff.mean()) if diff.size else 0.0


@dataclass
class Trial:
    higher: list[str]
    score: float
    met: bool


@dataclass
class PrecisionResult:
    candidates: list[str]
    overrides: dict[str, str]
    score: float
    trials: list[Trial] = field(default_factory=list)

    def flag(self) -> str:
        return ",".join(f"{name}:{p}" for name, p in self.overrides.items())


Progress = Callable[[str], None]


def find_precision_overrides(model: Any, config: BuilderConfig, inputs: list[dict],
                             metric: Metric, on_progress: Progress | None = None
                             ) -> PrecisionResult:
    """Bisects over the low-precision layers of `config`'s engine (see the module doc)."""
    say = on_progress or (lambda _text: None)
    if config.precision == "fp32":
        raise KilnError("debug precision needs a low-precision build",
                        hint="add --int8 (with --calib=DATA), --fp8 or --fp16")
    say("building the FP32 reference")
    reference = build_engine(model, dataclasses.replace(
        config, precision="fp32", calibrator=None, layer_precisions={}))
    expected = _outputs(reference, inputs)
    higher = config.fallback_precision if config.precision in ("int8", "fp8") else "fp32"
    # the search itself decides which layers leave low precision: no choice by speed
    config = dataclasses.replace(config, precision_constraints="obey")
    with tempfile.TemporaryDirectory() as folder:
        config = calibrate_once(config, Path(folder) / "calibration.cache")
        search = _Search(model, config, inputs, expected, metric, higher, say)
        first = search.build([])
        candidates = [model_layer_name(layer) for layer in first.layers()
                      if layer["precision"] in LOW and layer["precision"] != higher]
        search.candidates = candidates
        low = search.trial([], first)
        if low.met:
            return PrecisionResult(candidates, {}, low.score, search.trials)
        full = search.trial(candidates)
        if not full.met:
            raise KilnError(
                f"even with all {len(candidates)} {config.precision} layers in {higher} the "
                f"engine scores {metric.name}={full.score:.6g}, short of {metric}",
                hint="the rest of the engine loses the accuracy: try a looser --metric, or "
                     "build the other layers in fp32 (without --fp16)")
        forward = search.bisect(candidates)
        backward = search.bisect(candidates[::-1])
        chosen = min(forward, backward, key=len)
        chosen = search.prune(chosen)
        final = search.trial(chosen)
    ordered = [n for n in candidates if n in chosen]
    return PrecisionResult(candidates, {name: higher for name in ordered}, final.score,
                           search.trials)


class _Search:
    def __init__(self, model: Any, config: BuilderConfig, inputs: list[dict],
                 expected: list[dict], metric: Metric, higher: str, say: Progress) -> None:
        self.model, self.config, self.inputs, self.expected = model, config, inputs, expected
        self.metric, self.higher, self.say = metric, higher, say
        self.candidates: list[str] = []
        self.trials: list[Trial] = []
        self._seen: dict[frozenset[str], Trial] = {}

    def build(self, names: list[str]) -> Engine:
        overrides = dict(self.config.layer_precisions)
        overrides.update({n: self.higher for n in names})
        return build_engine(self.model, dataclasses.replace(self.config,
                                                            layer_precisions=overrides))

    def trial(self, names: list[str], engine: Engine | None = None) -> Trial:
        key = frozenset(names)
        if key in self._seen:
            return self._seen[key]
        engine = engine or self.build(names)
        outputs = _outputs(engine, self.inputs)
        score = min((self.metric.score(g, w) for g, w in zip(outputs, self.expected)),
                    key=lambda s: s if _HIGHER_IS_BETTER[self.metric.name] else -s)
        trial = Trial(sorted(names), score, self.metric.met(score))
        self.trials.append(trial)
        self._seen[key] = trial
        self.say(f"{len(names)} of {len(self.candidates)} layers in {self.higher}: "
                 f"{self.metric.name}={score:.6g} {'meets' if trial.met else 'misses'} "
                 f"{self.metric}")
        return trial

    def bisect(self, order: list[str]) -> list[str]:
        """The shortest prefix of `order` that meets the target (all of it does)."""
        lo, hi = 0, len(order)  # prefix lo misses (or is empty), prefix hi meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.trial(order[:mid]).met:
                hi = mid
            else:
                lo = mid
        return order[:hi]

    def prune(self, chosen: list[str]) -> list[str]:
        """Drops layers the target does without. Passes repeat until one removes nothing,
        so every layer kept was tried against the final set (the metric need not be
        monotonic in the set)."""
        kept = list(chosen)
        changed = True
        while changed:
            changed = False
            for name in list(kept):
                if len(kept) > 1 and self.trial([n for n in kept if n != name]).met:
                    kept.remove(name)
                    changed = True
        return kept


def _outputs(engine: Engine, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
    context = ExecutionContext(engine)
    return [{k: np.asarray(v) for k, v in context.run(feeds, as_numpy=True).items()}
            for feeds in inputs]


__all__ = ["Calibrator", "Metric", "PrecisionResult", "find_precision_overrides"]
