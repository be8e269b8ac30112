"""Bytes over the host link for one image, counted from the protocol without a device.

Network mode (:func:`network_image_traffic`): per image the LOAD frames of its pixels
(:func:`hw.network_program.image_beats`) with an ACK each, a RESULT with the OUT frames of the
``num_classes`` logits (each with the index of its first word) and DONE, and a RUN of 0 words with
its DONE (:class:`boards.runtime.NetworkRunner` overlaps the link with compute); the constants and
program once (:func:`hw.network_program.load_beats`), after a SESSION frame.

Layers mode (:func:`image_traffic`): every request of one image is encoded exactly as
:class:`boards.runtime.BoardRunner` sends it (the :func:`hw.program.model_jobs` layout,
:func:`hw.protocol.encode_loads`), and the replies' sizes follow from the protocol (:mod:`hw.link`):
an ACK per LOAD frame, the OUT frames of each RUN (CODES for thresholded layers), each with the index
of its first word, and its DONE. Activation values do not change any size, so zero activations stand in for the image's.
"""

from __future__ import annotations

import struct

import numpy as np

from compiler.graph import CompiledModel
from hw.engine_params import EngineParams
from hw.network_params import NetworkParams, build_digest
from hw.network_program import image_beats, load_beats
from hw.program import act_beats, output_words, resident_bases, resident_beats, setup_beats
from hw.protocol import (DONE_FORMAT, FRAME_BYTES, OUT_HEAD_BYTES, PROTOCOL_VERSION, RUN_FORMAT, SESSION_BYTES,
                         LinkInfo, LinkMode, OutputFormat, encode_loads)

from .runtime import output_format


def image_traffic(model: CompiledModel, params: EngineParams, resident: str, max_payload: int) -> dict:
    """``{"bytes_to_device", "bytes_from_device", "requests"}`` of one image on the engine of
    ``params`` (residency ``resident``, frame buffer ``max_payload`` bytes), and the same
    under ``"loading"`` for loading the resident constants once (:func:`_loading`)."""
    info = LinkInfo(PROTOCOL_VERSION, params.addr_bits, params.cols * params.out_bits, params.rows, params.cols,
                    max_payload, params.code_bits, params.target_bits, build=build_digest(params))

    bases = resident_bases(model, params, resident)
    to_device = from_device = requests = 0
    for node in model.convs:
        sent, acks, frames = _loads(setup_beats(params, node, bases[node.name], resident)
                                    + act_beats(params, node, np.zeros(node.in_shape, dtype=np.int64)), info)
        fmt = output_format(node)
        words, size = output_words(params, node), info.out_bytes(fmt)
        out_frames = -(-words // info.out_frame_words(fmt))
        to_device += sent + FRAME_BYTES + struct.calcsize(RUN_FORMAT)
        from_device += (acks + words * size + (FRAME_BYTES + OUT_HEAD_BYTES) * out_frames + FRAME_BYTES
                        + struct.calcsize(DONE_FORMAT))
        requests += frames + 1
    return {"bytes_to_device": to_device, "bytes_from_device": from_device, "requests": requests,
            "loading": _loading(resident_beats(model, params, resident), info)}


def _loading(beats, info: LinkInfo) -> dict:
    """The traffic of loading ``beats`` once: the SESSION frame the runners send first and its ACK, then the LOAD
    frames of ``beats`` and their ACKs (the PING before left out)."""
    sent, acks, frames = _loads(beats, info)
    return {"bytes_to_device": FRAME_BYTES + SESSION_BYTES + sent,
            "bytes_from_device": FRAME_BYTES + acks, "requests": 1 + frames}


def _loads(beats, info: LinkInfo) -> tuple[int, int, int]:
    """Bytes of the LOAD frames of ``beats``, of their ACKs, and the number of frames."""
    payloads = encode_loads(beats, info)
    return sum(FRAME_BYTES + len(x) for x in payloads), FRAME_BYTES * len(payloads), len(payloads)


def _run(info: LinkInfo, words: int, fmt: OutputFormat) -> tuple[int, int]:
    """Bytes of a RUN (or RESULT) asking for ``words`` words in ``fmt``, and of its OUT frames and DONE."""
    frames = -(-words // info.out_frame_words(fmt))
    return (FRAME_BYTES + struct.calcsize(RUN_FORMAT),
            words * info.out_bytes(fmt) + (FRAME_BYTES + OUT_HEAD_BYTES) * frames + FRAME_BYTES
            + struct.calcsize(DONE_FORMAT))


def network_info(model: CompiledModel, params: NetworkParams, max_payload: int) -> LinkInfo:
    """The INFO a network-mode bitstream of ``params`` for ``model`` states (frame buffer ``max_payload`` bytes)."""
    return LinkInfo(PROTOCOL_VERSION, params.addr_bits, params.value_bits, params.engine.rows, params.engine.cols,
                    max_payload, 0, params.target_bits, LinkMode.NETWORK, model.num_classes, build_digest(params))


def network_image_traffic(model: CompiledModel, params: NetworkParams, max_payload: int, loading: bool = True) -> dict:
    """``{"bytes_to_device", "bytes_from_device", "requests", "pixel_bytes"}`` of one image on the whole-network
    core of ``params`` (frame buffer ``max_payload`` bytes): its pixels' LOAD frames and their ACKs (together
    ``pixel_bytes``, what the line carries while the core computes the image before), the RESULT with the
    logits' OUT frames and DONE, the RUN of 0 words that starts it with its DONE; the same under ``"loading"``
    for the constants and program, loaded once (:func:`_loading`; left out with ``loading=False``, as encoding
    them takes the most of the time). Pixel values change no size, so a zero image stands in for any."""
    info = network_info(model, params, max_payload)
    sent, acks, frames = _loads(image_beats(model, params, np.zeros(model.input.shape, dtype=np.uint8)), info)
    result, replies = _run(info, model.num_classes, OutputFormat.FULL)
    start, done = _run(info, 0, OutputFormat.FULL)
    traffic = {"bytes_to_device": sent + result + start, "bytes_from_device": acks + replies + done,
               "requests": frames + 2, "pixel_bytes": sent + acks}
    if loading:
        traffic["loading"] = _loading(load_beats(model, params), info)
    return traffic
