"""Numbers a traced network computes from its input's size, replaced by their values.

A forward may compute a number from a tensor's size (akamaster's CIFAR ResNets:
``F.avg_pool2d(out, out.size()[3])``; ``x.view(-1, x.size(1) * x.size(2) * x.size(3))``); ``torch.fx``
records the queries and the arithmetic on them, not the numbers. The compiler knows the input's C x H x W, so
every such number that does not depend on the batch size is a constant: :func:`fold_sizes` runs the network on
zero images of two batch sizes and puts each node's value that is an int (or a tuple of ints) and the same for
both in place of the node where it is read. Numbers of the batch size (``x.size(0)``, ``x.size()`` whole) stay:
a reshape reads those.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from .capture import size_query

_BATCHES = (1, 2)


class _Recorder(fx.Interpreter):
    """Runs a graph, keeping every node's value that is a number (:func:`_number`)."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.numbers: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node):
        value = super().run_node(node)
        if node.op not in ("placeholder", "output") and _number(value):
            self.numbers[node] = tuple(value) if isinstance(value, torch.Size) else value
        return value


def _number(value) -> bool:
    """Whether ``value`` is an int or a (nested) tuple of ints, as ``torch.Size`` and its items are."""
    if isinstance(value, (tuple, list)):
        return all(_number(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def fold_sizes(module: nn.Module, graph: fx.Graph, input_shape: tuple[int, int, int]) -> None:
    """Replace, in ``graph`` (traced from ``module``, changed in place), each node whose value is a number that
    is the same for batches of 1 and 2 images of ``input_shape`` by that number where it is read, and drop such
    nodes that nothing reads then. Nothing changes where the network does not run on such images (the lowering
    then refuses it with its own reason), or where no node queries a size (every number is then a constant)."""
    if not any(size_query(node) for node in graph.nodes):
        return
    runner = fx.GraphModule(module, graph)
    seen = []
    try:
        for batch in _BATCHES:
            recorder = _Recorder(runner)
            with torch.no_grad():
                recorder.run(torch.zeros(batch, *input_shape, dtype=next(module.parameters(), torch.zeros(1)).dtype))
            seen.append(recorder.numbers)
    except Exception:           # noqa: BLE001 (any failure of the user's forward: the lowering explains it)
        return
    fixed = {node: value for node, value in seen[0].items() if seen[1].get(node) == value}
    if not fixed:
        return
    for node in graph.nodes:
        if node not in fixed and any(a in fixed for a in node.all_input_nodes):
            node.args = map_aggregate(node.args, lambda a: fixed.get(a, a) if isinstance(a, fx.Node) else a)
            node.kwargs = map_aggregate(node.kwargs, lambda a: fixed.get(a, a) if isinstance(a, fx.Node) else a)
    for node in reversed(list(graph.nodes)):
        if node in fixed and not node.users:
            graph.erase_node(node)
