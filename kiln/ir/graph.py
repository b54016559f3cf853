"""The graph kiln works on: Values, Nodes and Graphs. Pure data: no torch, no onnx.

Editing an edge keeps producers and consumers in step, so passes never patch them by hand::

    graph main (x: fp32[N,3,8,8]) -> (y)
      %c = Conv(%x, %w, %b) {pads=[1, 1, 1, 1]}
      %y = Relu(%c)

A Value consumed inside a subgraph (If/Loop/Scan bodies) lists that inner node among its
consumers, so an outer pass sees the use.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from kiln.ir.dtype import DType

Dim = int | str | None
SOURCE_NAME = "source_name"  # Value.meta key: the model's name for the tensor
Shape = tuple[Dim, ...]


class Value:
    """One edge: a tensor (or sequence/optional) produced by a node, a graph input or a constant."""

    __slots__ = ("_const", "consumers", "dtype", "kind", "meta", "name", "producer", "shape")

    def __init__(
        self,
        name: str,
        dtype: DType | None = None,
        shape: Shape | None = None,
        *,
        const: np.ndarray | None = None,
        kind: str = "tensor",
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.kind = kind  # "tensor", "sequence", "optional" or "map"
        self.producer: Node | None = None
        self.consumers: list[Node] = []
        self.meta: dict[str, Any] = {}
        self._const: np.ndarray | None = None
        if const is not None:
            self.const = const

    @property
    def const(self) -> np.ndarray | None:
        return self._const

    @const.setter
    def const(self, array: np.ndarray | None) -> None:
        self._const = array
        if array is not None:
            self.dtype = DType.from_numpy(array.dtype) if self.dtype is None else self.dtype
            self.shape = tuple(int(d) for d in array.shape)

    @property
    def is_const(self) -> bool:
        return self._const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dim is a known int, else None."""
        if self.shape is None or any(not isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)  # type: ignore[return-value]

    def type_str(self) -> str:
        dtype = self.dtype.short if self.dtype else "?"
        if self.shape is None:
            return f"{dtype}[?]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        text = f"{dtype}[{dims}]"
        return text if self.kind == "tensor" else f"{self.kind}<{text}>"

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type_str()}"


class Node:
    """One operator application. Inputs may be None for omitted optional inputs."""

    __slots__ = ("_inputs", "_outputs", "attrs", "domain", "graph", "meta", "name", "op_type")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        domain: str = "",
        name: str = "",
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None
        self._inputs: list[Value | None] = []
        self._outputs: list[Value | None] = list(outputs)
        for value in self._outputs:
            if value is not None:
                value.producer = self
        for value in inputs:
            self._inputs.append(value)
            if value is not None:
                value.consumers.append(self)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return tuple(self._outputs)

    @property
    def output(self) -> Value:
        """The first output (most ops have one)."""
        value = self._outputs[0]
        assert value is not None, f"node {self.name} has no first output"
        return value

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is not None:
            old.consumers.remove(self)
        self._inputs[index] = value
        if value is not None:
            value.consumers.append(self)

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        self.detach_inputs()
        for value in values:
            self._inputs.append(value)
            if value is not None:
                value.consumers.append(self)

    def detach_inputs(self) -> None:
        for value in self._inputs:
            if value is not None:
                value.consumers.remove(self)
        self._inputs = []

    def set_outputs(self, values: Sequence[Value | None]) -> None:
        for value in self._outputs:
            if value is not None and value.producer is self:
                value.producer = None
        self._outputs = list(values)
        for value in self._outputs:
            if value is not None:
                value.producer = self

    def subgraphs(self) -> Iterator[Graph]:
        for attr in self.attrs.values():
            if isinstance(attr, Graph):
                yield attr
            elif isinstance(attr, list):
                yield from (g for g in attr if isinstance(g, Graph))

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.op_type)

    def __repr__(self) -> str:
        outs = ", ".join("_" if v is None else f"%{v.name}" for v in self._outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        op = self.op_type if not self.domain else f"{self.domain}.{self.op_type}"
        attrs = {k: _short_attr(v) for k, v in self.attrs.items()}
        attr_text = f" {attrs}" if attrs else ""
        return f"{outs} = {op}({ins}){attr_text}"


def _short_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return f"<tensor {value.dtype}{list(value.shape)}>"
    if isinstance(value, Graph):
        return f"<graph {value.name}>"
    if isinstance(value, list) and value and isinstance(value[0], Graph):
        return f"<{len(value)} graphs>"
    return value


class Graph:
    """Nodes in topological order, with inputs, outputs, constants and opset imports.

    `parent` is the enclosing graph for If/Loop/Scan bodies, whose nodes may read values
    of any enclosing graph.
    """

    def __init__(
        self,
        name: str = "main",
        *,
        opsets: dict[str, int] | None = None,
        parent: Graph | None = None,
    ) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.opsets: dict[str, int] = dict(opsets or (parent.opsets if parent else {}))
        self.parent = parent
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()  # value names, unique in the whole graph tree
        self._node_names: set[str] = set()  # node names: a namespace of their own
        self._counter = itertools.count()

    # ----------------------------------------------------------------- names
    def root(self) -> Graph:
        graph = self
        while graph.parent is not None:
            graph = graph.parent
        return graph

    def reserve_name(self, name: str) -> str:
        self.root()._names.add(name)
        return name

    def fresh_name(self, hint: str) -> str:
        """A value name not used anywhere in this graph tree."""
        return self._fresh(hint or "v", self.root()._names)

    def fresh_node_name(self, hint: str) -> str:
        """A node name not used anywhere in this graph tree (the hint itself when free)."""
        return self._fresh(hint or "node", self.root()._node_names)

    def _fresh(self, hint: str, taken: set[str]) -> str:
        if hint not in taken:
            taken.add(hint)
            return hint
        counter = self.root()._counter
        while True:
            name = f"{hint}_{next(counter)}"
            if name not in taken:
                taken.add(name)
                return name

    # -------------------------------------------------------------- building
    def add_input(self, name: str, dtype: DType | None, shape: Shape | None, **kw: Any) -> Value:
        value = Value(self.reserve_name(name), dtype, shape, **kw)
        self.inputs.append(value)
        return value

    def constant(self, array: np.ndarray, name: str = "const") -> Value:
        """A new constant (initializer) holding `array`."""
        value = Value(self.fresh_name(name), const=np.asarray(array))
        self.initializers[value.name] = value
        return value

    def add_node(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        num_outputs: int = 1,
        outputs: Sequence[Value | None] | None = None,
        domain: str = "",
        name: str | None = None,
        before: Node | None = None,
    ) -> Node:
        """Creates a node (with fresh output values unless given) and inserts it.

        It goes at the end, or just before `before`; call `toposort()` after bulk edits.
        """
        node_name = self.fresh_node_name(name or op_type.lower())
        if outputs is None:
            outputs = [Value(self.fresh_name(f"{node_name}_out{i}" if i else node_name))
                       for i in range(num_outputs)]
        node = Node(op_type, inputs, outputs, attrs, domain=domain, name=node_name)
        self.insert(node, before=before)
        return node

    def insert(self, node: Node, *, before: Node | None = None) -> None:
        node.graph = self
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)

    def remove_node(self, node: Node) -> None:
        """Removes a node whose outputs nobody uses any more."""
        for value in node.outputs:
            if value is not None and (value.consumers or value in self.outputs):
                users = ", ".join(n.name for n in value.consumers) or "the graph outputs"
                raise ValueError(
                    f"cannot remove node {node.name}: its output {value.name} is still used by "
                    f"{users}; call replace_all_uses() first"
                )
        node.detach_inputs()
        node.graph = None
        self.nodes.remove(node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Makes every consumer of `old` (and the graph outputs) read `new` instead.

        A graph output keeps its name: `new` takes the name when it can (see
        `can_take_name`), otherwise an Identity node carries it. `new` stands for `old`
        from now on, so it inherits the model's name for the tensor (meta["source_name"],
        what calibration caches are keyed by) unless it has one of its own.
        """
        if SOURCE_NAME in old.meta:
            new.meta.setdefault(SOURCE_NAME, old.meta[SOURCE_NAME])
        for node in list(old.consumers):
            for i, value in enumerate(node.inputs):
                if value is old:
                    node.set_input(i, new)
        for graph in self._graphs_with_output(old):
            index = graph.outputs.index(old)
            if self.can_take_name(new):
                self._rename(new, old.name, old)
                graph.outputs[index] = new
            else:
                out = Value(old.name, old.dtype, old.shape)
                old.name = self.fresh_name(f"{old.name}_replaced")
                graph.outputs[index] = out
                graph.insert(Node("Identity", [new], [out], name=self.fresh_node_name("keep_name")))

    def can_take_name(self, value: Value) -> bool:
        """Whether `value` may be renamed: it is no graph's input or output."""
        graphs = self.root().walk_graphs()
        return not any(value is v for g in graphs for v in g.inputs + g.outputs)

    def _rename(self, value: Value, name: str, previous_owner: Value) -> None:
        previous_owner.name = self.fresh_name(f"{name}_replaced")
        for graph in self.root().walk_graphs():
            if graph.initializers.get(value.name) is value:
                del graph.initializers[value.name]
                graph.initializers[name] = value
        value.name = name

    def _graphs_with_output(self, value: Value) -> list[Graph]:
        return [g for g in self.root().walk_graphs() if any(v is value for v in g.outputs)]

    # -------------------------------------------------------------- traversal
    def walk_graphs(self) -> Iterator[Graph]:
        """This graph and every subgraph nested in it."""
        yield self
        for node in self.nodes:
            for sub in node.subgraphs():
                yield from sub.walk_graphs()

    def walk_nodes(self) -> Iterator[Node]:
        for graph in self.walk_graphs():
            yield from graph.nodes

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (not subgraphs): inputs, constants, node outputs."""
        yield from self.inputs
        yield from self.initializers.values()
        for node in self.nodes:
            yield from (v for v in node.outputs if v is not None)

    def toposort(self) -> None:
        """Reorders nodes so every node comes after the producers of what it reads.

        Stable: nodes already in order keep their relative order.
        """
        position = {id(n): i for i, n in enumerate(self.nodes)}
        ready: set[int] = set()
        placed: list[Node] = []
        pending = list(self.nodes)
        while pending:
            progressed = False
            rest = []
            for node in pending:
                if all(self._available(dep, position, ready) for dep in _reads(node)):
                    placed.append(node)
                    ready.add(id(node))
                    progressed = True
                else:
                    rest.append(node)
            if not progressed:
                names = ", ".join(n.name for n in rest[:5])
                raise ValueError(f"graph {self.name} has a cycle through {names}")
            pending = rest
        self.nodes = placed

    def _available(self, value: Value, position: dict[int, int], ready: set[int]) -> bool:
        producer = value.producer
        return producer is None or id(producer) not in position or id(producer) in ready

    def lint(self) -> None:
        """Checks the invariants passes rely on; each error says how to repair it."""
        known: set[int] = {id(v) for v in self.inputs}
        known |= {id(v) for v in self.initializers.values()}
        outer = _outer_values(self)
        for node in self.nodes:
            if node.graph is not self:
                raise ValueError(f"node {node.name} is listed in {self.name} but its .graph "
                                 "points elsewhere; insert nodes with Graph.insert()")
            for value in node.inputs:
                if value is None:
                    continue
                if id(value) not in known and id(value) not in outer:
                    raise ValueError(
                        f"node {node.name} reads %{value.name} before it is defined; "
                        "call toposort() after inserting nodes, or add the value as a constant"
                    )
                if node not in value.consumers:
                    raise ValueError(f"%{value.name} does not list {node.name} as a consumer; "
                                     "change inputs with Node.set_input(), not by assignment")
            for value in node.outputs:
                if value is not None:
                    if value.producer is not node:
                        raise ValueError(f"%{value.name} is an output of {node.name} but names "
                                         "another producer")
                    known.add(id(value))
            for sub in node.subgraphs():
                sub.lint()
        for value in self.outputs:
            if id(value) not in known and id(value) not in outer:
                raise ValueError(f"graph output %{value.name} is produced by no node")

    def __str__(self) -> str:
        ins = ", ".join(f"{v.name}: {v.type_str()}" for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        lines = [f"graph {self.name} ({ins}) -> ({outs})"]
        lines += [f"  {node!r}" for node in self.nodes]
        return "\n".join(lines)


def _reads(node: Node) -> Iterable[Value]:
    """What a node needs before it runs: its inputs and the outer values its bodies read."""
    yield from (v for v in node.inputs if v is not None)
    for sub in node.subgraphs():
        yield from captured_values(sub)


def captured_values(graph: Graph) -> list[Value]:
    """Values a subgraph (and the graphs nested in it) reads from enclosing scopes."""
    defined: set[int] = set()
    captured: dict[int, Value] = {}
    for g in graph.walk_graphs():
        defined |= {id(v) for v in g.values()}
    for g in graph.walk_graphs():
        for node in g.nodes:
            for value in node.inputs:
                if value is not None and id(value) not in defined:
                    captured[id(value)] = value
        for value in g.outputs:
            if id(value) not in defined:
                captured[id(value)] = value
    return list(captured.values())


def _outer_values(graph: Graph) -> set[int]:
    ids: set[int] = set()
    parent = graph.parent
    while parent is not None:
        for g in parent.walk_graphs():
            ids |= {id(v) for v in g.values()}
        parent = parent.parent
    return ids
