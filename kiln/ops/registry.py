"""One registry of operator semantics, keyed by (domain, op type) and opset range.

An implementation is a plain function over torch tensors: positional parameters are the
ONNX inputs in order (None for an omitted optional input), keyword-only parameters are the
attributes with ONNX's defaults. It returns one value, or a tuple for several outputs
(a list is one sequence value). A function that declares a keyword `num_outputs` is told
how many outputs the node has, one that declares `device` where to create new tensors::

    @register("Gemm", since=7)
    def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0): ...

For a model of opset N, the registration with the largest `since` <= N is used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ONNX_DOMAIN = ""
KILN_DOMAIN = "kiln"
_DOMAIN_ALIASES = {"ai.onnx": ONNX_DOMAIN}


def canonical_domain(domain: str) -> str:
    return _DOMAIN_ALIASES.get(domain, domain)


@dataclass(frozen=True)
class OpImpl:
    domain: str
    op_type: str
    since: int
    fn: Callable[..., Any]
    attr_names: frozenset[str] = field(default_factory=frozenset)
    takes_any_attr: bool = False
    wants_num_outputs: bool = False
    wants_device: bool = False
    host_inputs: tuple[int, ...] = ()  # inputs read as Python ints (shapes, axes, pads)

    def bind_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The attributes this implementation accepts (others are exporter extras)."""
        if self.takes_any_attr:
            return dict(attrs)
        return {k: v for k, v in attrs.items() if k in self.attr_names}

    def __call__(self, *inputs: Any, **attrs: Any) -> Any:
        return self.fn(*inputs, **attrs)


_REGISTRY: dict[tuple[str, str], list[OpImpl]] = {}
# keywords the runtime fills in: how many outputs the node has, the device to create on
_RUNTIME_KEYWORDS = frozenset({"num_outputs", "device"})


def register(
    op_type: str,
    since: int = 1,
    *,
    domain: str = ONNX_DOMAIN,
    host_inputs: tuple[int, ...] = (),
) -> Callable:
    """Registers the decorated function as `op_type` from opset `since` on.

    `host_inputs` lists the inputs the function reads as Python numbers (a Reshape's
    target shape, a Slice's starts): the runtime keeps those on the host.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(fn).parameters.values()
        keyword = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        impl = OpImpl(
            domain=canonical_domain(domain),
            op_type=op_type,
            since=since,
            fn=fn,
            attr_names=frozenset(keyword - _RUNTIME_KEYWORDS),
            takes_any_attr=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
            wants_num_outputs="num_outputs" in keyword,
            wants_device="device" in keyword,
            host_inputs=tuple(host_inputs),
        )
        versions = _REGISTRY.setdefault((impl.domain, op_type), [])
        versions[:] = [v for v in versions if v.since != since] + [impl]
        versions.sort(key=lambda v: v.since)
        return fn

    return decorate


def lookup(domain: str, op_type: str, opset: int | None) -> OpImpl | None:
    """The implementation for a model of this opset, or None if kiln has none."""
    versions = _REGISTRY.get((canonical_domain(domain), op_type))
    if not versions:
        return None
    if opset is None:
        return versions[-1]
    usable = [v for v in versions if v.since <= opset]
    return usable[-1] if usable else None


def registered() -> Iterator[OpImpl]:
    for versions in _REGISTRY.values():
        yield from versions


def opset_of(opsets: dict[str, int], domain: str) -> int | None:
    """The opset a model imports for `domain`; kiln's own domain is always version 1."""
    domain = canonical_domain(domain)
    if domain == KILN_DOMAIN:
        return 1
    if domain in opsets:
        return opsets[domain]
    return opsets.get("ai.onnx") if domain == ONNX_DOMAIN else None
