"""Bytes over the host link for one image, counted from the protocol without a device.

Every request of one image is encoded exactly as :class:`boards.runtime.BoardRunner` sends
it (the :func:`hw.program.model_jobs` layout, :func:`boards.protocol.encode_loads`), and the
replies' sizes follow from the protocol (:mod:`hw.link`): an ACK per LOAD frame, the OUT
frames of each RUN (CODES for thresholded layers), each with the index of its first word, and
its DONE. Activation values do not change any size, so zero activations stand in for the image's.
"""

from __future__ import annotations

import struct

import numpy as np

from compiler.graph import CompiledModel
from hw.engine_params import EngineParams
from hw.program import act_beats, output_words, resident_bases, resident_beats, setup_beats
from hw.protocol import DONE_FORMAT, FRAME_BYTES, OUT_HEAD_BYTES, PROTOCOL_VERSION, RUN_FORMAT, LinkInfo, encode_loads

from .runtime import output_format


def image_traffic(model: CompiledModel, params: EngineParams, resident: str, max_payload: int) -> dict:
    """``{"bytes_to_device", "bytes_from_device", "requests"}`` of one image on the engine of
    ``params`` (residency ``resident``, frame buffer ``max_payload`` bytes), and the same
    under ``"loading"`` for loading the resident constants once (PING left out)."""
    info = LinkInfo(PROTOCOL_VERSION, params.addr_bits, params.cols * params.out_bits, params.rows, params.cols,
                    max_payload, params.code_bits, params.target_bits)

    def loads(beats) -> tuple[int, int, int]:
        payloads = encode_loads(beats, info)
        return sum(FRAME_BYTES + len(x) for x in payloads), FRAME_BYTES * len(payloads), len(payloads)

    bases = resident_bases(model, params, resident)
    to_device = from_device = requests = 0
    for node in model.convs:
        sent, acks, frames = loads(setup_beats(params, node, bases[node.name], resident)
                                   + act_beats(params, node, np.zeros(node.in_shape, dtype=np.int64)))
        fmt = output_format(node)
        words, size = output_words(params, node), info.out_bytes(fmt)
        out_frames = -(-words // info.out_frame_words(fmt))
        to_device += sent + FRAME_BYTES + struct.calcsize(RUN_FORMAT)
        from_device += (acks + words * size + (FRAME_BYTES + OUT_HEAD_BYTES) * out_frames + FRAME_BYTES
                        + struct.calcsize(DONE_FORMAT))
        requests += frames + 1
    sent, acks, frames = loads(resident_beats(model, params, resident))
    return {"bytes_to_device": to_device, "bytes_from_device": from_device, "requests": requests,
            "loading": {"bytes_to_device": sent, "bytes_from_device": acks, "requests": frames}}
