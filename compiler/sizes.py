"""Size queries of a traced network that its input shape decides, replaced by their numbers.

A forward may compute a number from a tensor's size (akamaster's CIFAR ResNets:
``F.avg_pool2d(out, out.size()[3])``); ``torch.fx`` records the query, not the number. The compiler
knows the input's C x H x W, so every query whose value does not depend on the batch size is a
constant: :func:`fold_sizes` runs the network on zero images of two batch sizes and puts each such
query's value (an int, or a tuple of ints) in place of the query where it is read. Queries of the
batch size (``x.size(0)``, ``x.size()`` whole) stay: a reshape reads those.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from .capture import size_query

_BATCHES = (1, 2)


class _Recorder(fx.Interpreter):
    """Runs a graph, keeping the value of every size query."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.sizes: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node):
        value = super().run_node(node)
        if size_query(node):
            self.sizes[node] = value
        return value


def _constant(value) -> bool:
    """Whether ``value`` is an int or a (nested) tuple of ints, as ``torch.Size`` and its items are."""
    if isinstance(value, (tuple, list)):
        return all(_constant(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def fold_sizes(module: nn.Module, graph: fx.Graph, input_shape: tuple[int, int, int]) -> None:
    """Replace, in ``graph`` (traced from ``module``, changed in place), each size query whose value is the same
    for batches of 1 and 2 images of ``input_shape`` by that value (a ``torch.Size`` as a tuple), and drop the
    queries nothing reads then. Nothing changes where the graph has no size query, or where the network does not
    run on such images (the lowering then refuses it with its own reason)."""
    if not any(size_query(node) for node in graph.nodes):
        return
    runner = fx.GraphModule(module, graph)
    seen = []
    try:
        for batch in _BATCHES:
            recorder = _Recorder(runner)
            with torch.no_grad():
                recorder.run(torch.zeros(batch, *input_shape, dtype=next(module.parameters(), torch.zeros(1)).dtype))
            seen.append(recorder.sizes)
    except Exception:           # noqa: BLE001 (any failure of the user's forward: the lowering explains it)
        return
    fixed = {node: tuple(value) if isinstance(value, torch.Size) else value for node, value in seen[0].items()
             if _constant(value) and seen[1].get(node) == value}
    for node in graph.nodes:
        if any(a in fixed for a in node.all_input_nodes) and node not in fixed:
            node.args = map_aggregate(node.args, lambda a: fixed.get(a, a) if isinstance(a, fx.Node) else a)
            node.kwargs = map_aggregate(node.kwargs, lambda a: fixed.get(a, a) if isinstance(a, fx.Node) else a)
    for node in reversed(list(graph.nodes)):
        if size_query(node) and not node.users:
            graph.erase_node(node)
