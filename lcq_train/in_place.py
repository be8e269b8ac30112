"""In-place operations in a traced forward, made explicit so that the graph reads as eager PyTorch runs.

Eager PyTorch changes a tensor in place (``x += y``, ``x.add_(y)``, ``nn.ReLU(inplace=True)``,
``F.relu(x, inplace=True)``, ``x.relu_()``), and every later read of ``x`` sees the new values. A
``torch.fx`` graph states data flow by its edges only, so:

- :class:`Proxy` records an augmented assignment (``x += y``) as the in-place operator
  (``operator.iadd``), as PyTorch runs it; fx's own proxy has none, so Python made it ``x = x + y``
  and a tensor that still named the old ``x`` kept the old values in the traced model;
- :func:`read_in_place` makes each later read of a tensor changed in place read the in-place
  operation's result (the same tensor, now an edge of the graph), so that inserted quantizers and the
  compiler see what eager PyTorch computes. A later read of a view or alias of it (through
  ``nn.Identity``, ``flatten``, ...) changes too; that is refused, naming both, with the fix.
"""

from __future__ import annotations

import operator

import torch.nn.functional as F
from torch import fx, nn

# Augmented assignments: the operator PyTorch runs in place, by the dunder method Python looks up.
AUGMENTED = {"__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
             "__itruediv__": operator.itruediv, "__ifloordiv__": operator.ifloordiv, "__imod__": operator.imod,
             "__ipow__": operator.ipow, "__imatmul__": operator.imatmul, "__iand__": operator.iand,
             "__ior__": operator.ior, "__ixor__": operator.ixor, "__ilshift__": operator.ilshift,
             "__irshift__": operator.irshift}

# Operations whose result is (a view of) their first input: a change in place of one changes the other.
_ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ALIAS_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, operator.getitem}
_ALIAS_METHODS = {"view", "view_as", "reshape", "flatten", "unflatten", "contiguous", "to", "squeeze", "unsqueeze",
                  "permute", "transpose", "t", "expand", "expand_as", "detach", "narrow", "select", "unfold",
                  "as_strided", "diagonal", "movedim", "split", "chunk", "unbind"}


class Proxy(fx.Proxy):
    """fx's proxy, with augmented assignments recorded as the in-place operators (:data:`AUGMENTED`)."""


for _method, _op in AUGMENTED.items():
    setattr(Proxy, _method, lambda self, other, op=_op: self.tracer.create_proxy("call_function", op, (self, other),
                                                                                  {}))


def in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` changes its first input in place."""
    if node.op == "call_module":
        return getattr(modules.get(node.target), "inplace", False) is True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in AUGMENTED.values() or node.kwargs.get("inplace") is True or \
            (name.endswith("_") and not name.endswith("__"))
    return False


def _alias(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s result shares its first input's memory (a view, the same tensor, or changed in place)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ALIAS_MODULES) or in_place(node, modules)
    if node.op == "call_method":
        return node.target in _ALIAS_METHODS or in_place(node, modules)
    if node.op == "call_function":
        return node.target in _ALIAS_FUNCTIONS or in_place(node, modules) or \
            getattr(node.target, "__name__", "") in _ALIAS_METHODS
    return False


def _first(node: fx.Node):
    return node.args[0] if node.args else next(iter(node.kwargs.values()), None)


class InPlaceRead(ValueError):
    """A view or alias of a tensor changed in place is read after the change."""


def read_in_place(graph: fx.Graph, modules: dict[str, nn.Module], describe) -> None:
    """Make every read of a tensor after an operation changed it in place read that operation's result.
    :class:`InPlaceRead` (``describe(node)`` names the operation) when a view or alias of it is read afterwards."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        x = _first(node)
        if not in_place(node, modules) or not isinstance(x, fx.Node):
            continue
        root = x
        while _alias(root, modules) and isinstance(_first(root), fx.Node):
            root = _first(root)
        group, stack = [], [root]              # the tensors sharing x's memory, but those made from node
        while stack:
            t = stack.pop()
            group.append(t)
            stack.extend(u for u in t.users if u is not node and _alias(u, modules) and _first(u) is t)
        for t in group:
            late = [u for u in t.users if u is not node and order[u] > order[node]]
            if t is x:
                for u in late:
                    u.replace_input_with(x, node)
            elif late:
                raise InPlaceRead(f"{describe(node)} changes {root.name!r} in place, which {late[0].name!r} reads "
                                 f"afterwards through {t.name!r}; use inplace=False (or x = x + y for x += y), or "
                                 "read the tensor before the change")
