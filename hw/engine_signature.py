"""The layer engine's ports: :class:`EngineSignature` (layer mode, the host link's side flipped) and
:func:`network_signature` (network mode, the network core's side flipped). :mod:`hw.engine` exports both."""

from __future__ import annotations

from amaranth import signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .engine_params import TARGET_BITS, EngineParams


class EngineSignature(wiring.Signature):
    """The layer engine's host interface, as the engine sees it; the host side uses it flipped.

    - ``load``: stream in of :attr:`load_layout` beats ``(target, addr, data)``, ``addr_bits``
      and ``data_bits`` wide; a beat is taken at a clock edge with ``valid & ready``. ``ready`` is ``~busy``
      whatever ``valid`` (in layer mode, where :func:`hw.reset_tree.reset_tree` holds, also low while the PE
      rows may still be in reset: :func:`hw.reset_tree.settling`).
    - ``start`` (in): a one-cycle pulse begins a layer (ignored while busy); ``busy`` (out):
      high from the next cycle until the last output word has been accepted.
    - ``out``: stream out of ``out_bits``-bit output words (``cols`` signed fields, column 0 lowest);
      ``valid`` stays high, and the word unchanged, until the edge that takes it (``ready``, which
      may stay low for any number of cycles: back-pressure stalls the read-back).
    """

    def __init__(self, addr_bits: int, data_bits: int, out_bits: int):
        for name, value in (("Address width", addr_bits), ("Data width", data_bits), ("Output word width", out_bits)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._addr_bits, self._data_bits, self._out_bits = addr_bits, data_bits, out_bits
        super().__init__({
            "load": In(stream.Signature(self.load_layout)),
            "start": In(1),
            "busy": Out(1),
            "out": Out(stream.Signature(out_bits)),
        })

    @classmethod
    def for_params(cls, params: EngineParams) -> EngineSignature:
        """The signature of a layer-mode engine for ``params``: output words of ``cols`` fields of ``out_bits``."""
        return cls(params.addr_bits, params.data_bits, params.cols * params.out_bits)

    @property
    def addr_bits(self) -> int:
        return self._addr_bits

    @property
    def data_bits(self) -> int:
        return self._data_bits

    @property
    def out_bits(self) -> int:
        return self._out_bits

    @property
    def load_layout(self) -> data.StructLayout:
        """A load beat: ``target`` (:data:`hw.engine_params.TARGET_BITS`), ``addr``, ``data``, lowest first."""
        return data.StructLayout({"target": TARGET_BITS, "addr": self._addr_bits, "data": self._data_bits})

    def __eq__(self, other):
        return type(other) is EngineSignature and (other.addr_bits, other.data_bits, other.out_bits) == (
            self.addr_bits, self.data_bits, self.out_bits)

    def __repr__(self):
        return f"EngineSignature({self.addr_bits}, {self.data_bits}, {self.out_bits})"


def network_signature(params: EngineParams, reg_bits: int, value_bits: int) -> wiring.Signature:
    """The engine's ports in network mode (``LayerEngine(..., value_depth=N)``), as the engine sees them.

    - ``load``, ``start``, ``busy``: as :class:`EngineSignature` (``load`` also writes the
      registers of :func:`~hw.engine_params.network_registers`).
    - ``code_write`` (in, used only while idle): ``en`` (one bit per lane), ``addr``, ``data``
      (``rows`` lanes of ``abits``) write the chosen lanes of one activation-buffer word.
    - ``val_write`` (out): ``en`` (one bit per half), ``addr`` (``reg_bits``), ``data`` (``halves``
      signed ``value_bits`` fields): the output values of a layer whose ``dst_values`` is 1, one (or, in
      pairs, two) per cycle, into word ``addr`` of the value memory (value ``addr * halves + h`` in half
      ``h``; ``halves`` = :attr:`~hw.engine_params.EngineParams.halves`), while the layer computes its
      next channel tiles (so a layer's output must not share words with its input).
    - ``val_read`` (while busy): ``addr`` (out, ``reg_bits``), ``data`` (in, ``halves`` values, the
      word at the address of :func:`hw.column_memory.value_read_latency` cycles before): with ``dst_add``, the values
      each write adds to.
    - ``code_written`` (out): the activation buffer's write in every cycle, whoever writes, a
      probe for simulations: ``en`` (one bit per lane of each half), ``addr``, ``data`` (``halves``
      activation words: word ``addr * halves + h`` in half ``h``); on the ECP5 the buffer takes it a cycle
      later, from registers.
    - ``code_read`` (used only while idle): ``addr`` (in), ``data`` (out, ``rows`` lanes of ``abits``:
      the activation-buffer word at the previous cycle's address): the buffer's read port, lent.
    - ``activation`` (with ``act_fuse``): ``valid``, ``value`` (signed ``value_bits``), ``slot``
      (``reg_bits``: ``act_slot`` + the value's channel) out, the cycle after each value is written (on the
      ECP5, :func:`hw.memories.slow_block_ram`, ``valid`` and ``slot`` three cycles before their ``value``: the
      lent unit registers the slot and, twice, the thresholds' word it reads there); ``code`` (in, ``abits``):
      the value's code under the thresholds of ``slot``, expected ``ThresholdUnit.LATENCY`` cycles after the value
      (:class:`hw.vector.VectorUnit`'s ``lent_*`` ports); with ``write_pairs`` also ``value_odd`` and
      ``code_odd``: the odd position's of a pair.
    """
    halves = params.halves
    lanes = wiring.Signature({"en": Out(params.rows), "addr": Out(range(params.act_depth)),
                              "data": Out(params.rows * params.abits)})
    written = wiring.Signature({"en": Out(halves * params.rows), "addr": Out(range(-(-params.act_depth // halves))),
                                "data": Out(halves * params.rows * params.abits)})
    values = wiring.Signature({"en": Out(halves), "addr": Out(reg_bits), "data": Out(halves * value_bits)})
    old_values = wiring.Signature({"addr": Out(reg_bits), "data": In(halves * value_bits)})
    reader = wiring.Signature({"addr": Out(range(params.act_depth)), "data": In(params.rows * params.abits)})
    odd = {"value_odd": Out(signed(value_bits)), "code_odd": In(params.abits)} if halves == 2 else {}
    activation = wiring.Signature({"valid": Out(1), "value": Out(signed(value_bits)), "slot": Out(reg_bits),
                                   "code": In(params.abits), **odd})
    # Load data: every target's word, the wide weights' (network mode only, not a link target) included.
    wide = params.cols * params.weight_bits if params.wide_depth else 0
    load = data.StructLayout({"target": TARGET_BITS, "addr": params.addr_bits,
                              "data": max(params.data_bits, reg_bits, wide)})
    return wiring.Signature({"load": In(stream.Signature(load)), "start": In(1), "busy": Out(1),
                             "code_write": In(lanes), "val_write": Out(values), "val_read": Out(old_values),
                             "code_written": Out(written), "activation": Out(activation), "code_read": In(reader)})
