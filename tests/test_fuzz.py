"""Fuzzing: the host link against a faulty device, model files and checkpoints against damage.

Every input must end, within a time bound, in one of three outcomes: the correct result, a
detected-and-recovered retry (the correct result after a resend, resync or repeated layer run), or
the project's own error (:class:`hw.protocol.LinkError`, :class:`compiler.format.ModelFormatError`,
:class:`lcq_train.checkpoint.CheckpointError`, naming the file where there is one). Never a hang,
another exception (a crash), a silently wrong result, or a link session that gave up on a refusal
(NACK) before its repeated layer runs were spent (the host's requests are well formed, so the device refuses only
frames the line damaged, and sending again may succeed): results are compared with the expected
words, logits-free but bit for bit, and loaded files with the original.

Classes of input (hypothesis draws each from a ``random.Random`` it controls, so that the same
case functions serve ``benchmarks/fuzz.py``'s seeded campaigns):

- ``frame``: one frame with a burst of flipped bits (CRC-16 detects every burst of up to 16
  bits), truncated, extended, with a byte inserted or deleted, or a damaged sync byte.
- ``info``: an INFO reply of random (mostly impossible) parameters: refused, or usable.
- ``session``: whole sessions (PING, SESSION, LOADs, RUNs of two layer jobs, FULL and CODES words) with a
  scripted device (:class:`FakeDevice`) that answers correctly, behind a port
  (:class:`FaultyPort`) that damages frames each way at a random rate: on the way in bursts,
  drops and truncations (the device NACKs as the bridge does, its type and length before the checksum, or
  stays silent); on the way back bursts, drops,
  truncations (the rest of the reply lost), noise before a frame, duplicated frames and empty
  frames of types that are never empty, any number of them in one reply.
- ``dup+drop``: sessions whose first RUN of two or more OUT frames loses one of them and gets
  another twice, so that the word count still matches: the index of its first word that each
  OUT frame carries (protocol version 3) must give it away (version 2 returned wrong words
  without an error in 822 of 2,919 such sessions).
- ``model file``: byte edits and truncations of the digits model, and members edited inside
  the zip with a recomputed zip CRC (the helpers of ``tests/test_model_file.py``).
- ``checkpoint``: byte edits, truncations and appended bytes of a checkpoint (the helpers of
  ``tests/test_checkpoint.py``).

The default run is bounded (about 20-30 s, most of it the fake device against the bridge in the simulator);
``pytest -m fuzz`` runs the long campaigns.
"""

from __future__ import annotations

import hashlib
import random
import struct
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Hang, within

from boards.link_host import LinkHost
from hw.engine_params import TARGETS
from hw.protocol import (CRC_BYTES, INFO_HEAD_BYTES, INFO_HEAD_FORMAT, PROTOCOL_VERSION, RUN_FORMAT, SESSION_BITS,
                         SESSION_BYTES, SYNC, BoardReset, FrameError, FrameType, LinkError, LinkInfo, LinkNoise,
                         NackCode, NackError, OutputFormat, crc16, decode_done, decode_frame, decode_words, encode_done,
                         encode_frame, encode_loads, encode_out, encode_run, encode_session)

OUTCOMES = ("correct", "recovered", "clean error", "crash", "hang", "silent wrong answer", "gave up early")
GOOD = ("correct", "recovered", "clean error")
BOUND_S = 10.0          # one input, whatever it is (a session takes milliseconds)
MAX_PORT_OPS = 200_000  # reads and writes of one session: far beyond the host's bounded retries


def crash(error: BaseException) -> tuple[str, str]:
    return "crash", "".join(traceback.format_exception(type(error), error, error.__traceback__))[-3000:]


# ------------------------------------------------------------------------------- mutations of bytes

def burst(data: bytes, rnd: random.Random) -> bytes:
    """``data`` with a burst of 1..16 bits flipped (its first and last bits among them) at a random
    place: an error CRC-16/CCITT detects in any frame whose bounds are known."""
    bits = 8 * len(data)
    length = rnd.randint(1, min(16, bits))
    start = rnd.randrange(bits - length + 1)
    pattern = rnd.getrandbits(length) | 1 | 1 << (length - 1)
    value = int.from_bytes(data, "big") ^ pattern << (bits - start - length)
    return value.to_bytes(len(data), "big")


def noise(rnd: random.Random, most: int = 24) -> bytes:
    return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, most)))


def byte_edits(data: bytes, rnd: random.Random, tail: int = 0) -> bytes:
    """``data`` with 1..4 bytes replaced by other values (``tail``: half of them in the last ``tail`` bytes)."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        lo = max(0, len(data) - tail) if tail and rnd.random() < 0.5 else 0
        i = rnd.randrange(lo, len(data))
        out[i] ^= rnd.randint(1, 255)
    return bytes(out)


# ------------------------------------------------------------------------------- frames

FRAME_MUTATIONS = ("burst", "truncate", "extend", "insert", "delete", "sync")


def mutate_frame(frame: bytes, kind: str, rnd: random.Random) -> bytes:
    if kind == "burst":
        return frame[:1] + burst(frame[1:], rnd)
    if kind == "truncate":
        return frame[:rnd.randrange(len(frame))]
    if kind == "extend":
        return frame + noise(rnd, 8)
    if kind == "insert":
        i = rnd.randrange(1, len(frame) + 1)
        return frame[:i] + bytes([rnd.getrandbits(8)]) + frame[i:]
    if kind == "delete":
        i = rnd.randrange(1, len(frame))
        return frame[:i] + frame[i + 1:]
    if kind == "sync":
        return bytes([frame[0] ^ rnd.randint(1, 255)]) + frame[1:]
    raise ValueError(kind)


def frame_case(rnd: random.Random) -> tuple[str, str]:
    """A random frame, mutated one way, decoded: the project's error (the frame is never taken
    for another one)."""
    ftype = rnd.choice([*FrameType, rnd.getrandbits(8)])
    payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 2, 4, rnd.randint(0, 64)])))
    original = encode_frame(ftype, payload)
    kind = rnd.choice(FRAME_MUTATIONS)
    damaged = mutate_frame(original, kind, rnd)
    try:
        with within(BOUND_S, f"decoding a frame ({kind})"):
            frame = decode_frame(damaged)
    except Hang as e:
        return "hang", f"{kind}: {e}"
    except LinkError:
        return "clean error", kind
    except Exception as e:      # noqa: BLE001 - any other exception is what the fuzz looks for
        return crash(e)
    if damaged == original:
        return "correct", kind
    return "silent wrong answer", f"{kind}: {damaged.hex()} decoded as {frame} (sent {original.hex()})"


# ------------------------------------------------------------------------------- a scripted device

INFO = LinkInfo(PROTOCOL_VERSION, 6, 24, 3, 4, 32, 2, (8, 12, 0, 20, 5, 9), build=0x5EEDC0DE)   # test_link's bridge
NEVER_EMPTY = (FrameType.OUT, FrameType.DONE, FrameType.INFO, FrameType.NACK)  # an empty ACK is a valid ACK
REPLY_FAULTS = ("corrupt", "drop", "truncate", "noise", "duplicate", "empty")
REQUEST_FAULTS = ("corrupt", "drop", "truncate")


class FakeEngine:
    """Load targets as memories; a RUN returns as many words as the CONFIG word at address 0 says,
    each a hash of everything loaded and its index (so that any lost or wrong word shows)."""

    def __init__(self, info: LinkInfo):
        self.info, self.memory = info, {}

    def apply(self, beats) -> None:
        for target, addr, data in beats:
            self.memory[target, addr] = data

    def output(self) -> list[int]:
        seed = hashlib.blake2b(repr(sorted(self.memory.items())).encode(), digest_size=16).digest()
        mask = (1 << self.info.out_bits) - 1
        return [int.from_bytes(hashlib.blake2b(seed + i.to_bytes(4, "little"), digest_size=8).digest(), "little")
                & mask for i in range(self.memory.get((0, 0), 0))]

    def fields(self, word: int, fmt: OutputFormat) -> int:
        """``word`` as the host gets it in ``fmt`` (CODES: the low code bits of each field, widened)."""
        if fmt == OutputFormat.FULL:
            return word
        field, mask = self.info.out_bits // self.info.cols, (1 << self.info.code_bits) - 1
        return sum(((word >> c * field) & mask) << c * field for c in range(self.info.cols))


class FakeDevice:
    """The link bridge of :mod:`hw.link` in layers mode: ``receive(bytes of one request, arriving back to back)`` ->
    the frames of its reply (PING -> INFO; LOAD -> ACK; RUN -> OUT frames, each the index of its first word and as
    many words as the rest of max_payload holds, then DONE; RESULT -> DONE 0, the engine being idle; SESSION ->
    ACK, the session that DONE states; INFO is ``info_payload`` if given, else ``info``'s constant bytes; NACKs as and
    when the bridge's receive FSM gives them: ``test_fake_device_answers_damaged_requests_as_the_bridge_does``
    compares the two on damaged byte streams). :meth:`reset` clears the engine and the session, as a board's reset."""

    def __init__(self, info: LinkInfo = INFO, info_payload: bytes | None = None):
        self.info, self.engine, self.session = info, FakeEngine(info), 0
        self.info_payload = info_payload

    def reset(self) -> None:
        self.engine.memory.clear()
        self.session = 0

    @staticmethod
    def nack(code: int, ftype: int) -> bytes:
        return encode_frame(FrameType.NACK, bytes([code, ftype & 0xFF]))

    def receive(self, data: bytes) -> list[bytes]:
        """The bridge's receive FSM over ``data``: bytes before a sync byte are skipped; the type byte is refused
        (TYPE) as it arrives and the length (LENGTH) once its high byte has, both before the checksum; a frame
        cut short is refused TIMEOUT (its type byte, or 0 if none came); after any refusal but TIMEOUT the bridge
        drains the line, and after a whole frame it is busy answering, so the rest of ``data`` is dropped."""
        start = data.find(bytes([SYNC]))
        if start < 0:
            return []                   # no frame started: the bridge waits
        frame = data[start + 1:]
        if not frame:
            return [self.nack(NackCode.TIMEOUT, 0)]
        ftype = frame[0]
        if ftype not in (FrameType.PING, FrameType.LOAD, FrameType.RUN, FrameType.RESULT, FrameType.SESSION):
            return [self.nack(NackCode.TYPE, ftype)]
        if len(frame) < 3:
            return [self.nack(NackCode.TIMEOUT, ftype)]
        length = int.from_bytes(frame[1:3], "little")
        header = 1 + self.info.addr_bytes
        if (ftype == FrameType.LOAD and not header < length <= self.info.max_payload
                or ftype in (FrameType.RUN, FrameType.RESULT) and length != struct.calcsize(RUN_FORMAT)
                or ftype == FrameType.SESSION and length != SESSION_BYTES
                or ftype == FrameType.PING and length):
            return [self.nack(NackCode.LENGTH, ftype)]
        end = 3 + length + CRC_BYTES
        if len(frame) < end:
            return [self.nack(NackCode.TIMEOUT, ftype)]
        if crc16(frame[:end]):
            return [self.nack(NackCode.CRC, ftype)]
        payload = frame[3:3 + length]
        if ftype == FrameType.PING:
            own = self.info.encode()
            return [encode_frame(FrameType.INFO, own if self.info_payload is None else self.info_payload)]
        if ftype == FrameType.SESSION:
            self.session = int.from_bytes(payload, "little")
            return [encode_frame(FrameType.ACK)]
        if ftype == FrameType.LOAD:
            code = self.load(payload)
            return [encode_frame(FrameType.ACK) if code is None else self.nack(code, ftype)]
        return self.run(payload, ftype)

    def load(self, payload: bytes) -> int | None:
        info, header = self.info, 1 + self.info.addr_bytes
        target = payload[0]
        if target >= info.targets or not info.target_bits[target]:
            return NackCode.TARGET
        size, body = info.word_bytes(target), payload[header:]
        if len(body) % size:
            return NackCode.LENGTH
        addr = int.from_bytes(payload[1:header], "little")
        self.engine.apply((target, addr + i, int.from_bytes(body[i * size:(i + 1) * size], "little"))
                          for i in range(len(body) // size))
        return None

    def run(self, payload: bytes, ftype: int = FrameType.RUN) -> list[bytes]:
        """The reply to a RUN (or a RESULT: the engine, idle between requests, has no words) of ``payload``
        (its length checked)."""
        info = self.info
        if payload[-1] not in (0, 1) or (payload[-1] == OutputFormat.CODES and not info.code_bits):
            return [self.nack(NackCode.LENGTH, ftype)]
        asked, fmt = struct.unpack(RUN_FORMAT, payload)
        fmt = OutputFormat(fmt)
        words = self.engine.output() if ftype == FrameType.RUN else []
        step = info.out_bytes(fmt)
        per = info.out_frame_words(fmt)
        frames = []
        for i in range(0, asked, per):
            chunk = words[i:i + per]
            if not chunk:
                break
            chunk += [0] * (min(per, asked - i) - len(chunk))     # the engine stopped within the frame
            body = b""
            for word in chunk:
                if fmt == OutputFormat.CODES:
                    field, mask = info.out_bits // info.cols, (1 << info.code_bits) - 1
                    word = sum(((word >> c * field) & mask) << c * info.code_bits for c in range(info.cols))
                body += word.to_bytes(step, "little")
            frames.append(encode_frame(FrameType.OUT, encode_out(i, body)))
        return frames + [encode_frame(FrameType.DONE, encode_done(len(words), self.session))]


class FaultyPort:
    """A pyserial-like port to ``device`` that damages each frame, each way, with probability
    ``rate`` (:data:`REQUEST_FAULTS`, :data:`REPLY_FAULTS`; ``faults`` counts them), or, with
    ``dup_drop``, makes the first RUN reply of two or more OUT frames lose one of them and get
    another twice (the word count still matches) and leaves the rest alone. ``read`` returns what
    has arrived (fewer bytes: the port timed out)."""

    def __init__(self, device: FakeDevice, rnd: random.Random, rate: float, *, dup_drop: bool = False):
        self.device, self.rnd, self.rate, self.dup_drop = device, rnd, rate, dup_drop
        self.to_host = bytearray()
        self.faults: Counter = Counter()
        self.ops = 0

    def _tick(self) -> None:
        self.ops += 1
        if self.ops > MAX_PORT_OPS:
            raise Hang(f"more than {MAX_PORT_OPS} port operations in one session")

    def write(self, data: bytes) -> None:
        self._tick()
        data = bytes(data)
        if self.rnd.random() < self.rate:
            fault = self.rnd.choice(REQUEST_FAULTS)
            self.faults[f"request {fault}"] += 1
            data = (burst(data, self.rnd) if fault == "corrupt" else b"" if fault == "drop"
                    else data[:self.rnd.randrange(1, len(data))])
        self.to_host += self._reply(self.device.receive(data))

    def _reply(self, frames: list[bytes]) -> bytes:
        rnd, out = self.rnd, bytearray()
        if self.dup_drop and sum(f[1] == FrameType.OUT for f in frames) >= 2:
            self.dup_drop = False
            outs = [i for i, f in enumerate(frames) if f[1] == FrameType.OUT]
            lost, twice = rnd.sample(outs, 2)
            self.faults["dup+drop"] += 1
            frames = [g for i, f in enumerate(frames) if i != lost for g in ([f, f] if i == twice else [f])]
            return b"".join(frames)
        for frame in frames:
            if rnd.random() >= self.rate:
                out += frame
                continue
            fault = rnd.choice(REPLY_FAULTS)
            self.faults[f"reply {fault}"] += 1
            if fault == "corrupt":
                out += burst(frame, rnd)
            elif fault == "truncate":
                out += frame[:rnd.randrange(len(frame))]
                break                   # the rest of the reply is lost
            elif fault == "noise":
                out += noise(rnd) + frame
            elif fault == "duplicate":
                out += frame + frame
            elif fault == "empty":
                out += encode_frame(rnd.choice(NEVER_EMPTY)) + frame
        return bytes(out)

    def read(self, n: int) -> bytes:
        self._tick()
        got = bytes(self.to_host[:n])
        del self.to_host[:n]
        return got

    def reset_input_buffer(self) -> None:
        self.to_host.clear()


def random_jobs(rnd: random.Random, info: LinkInfo = INFO, count: int = 2) -> list[tuple[list, int, OutputFormat]]:
    """``count`` layer jobs ``(beats, out_words, fmt)``: the word count in CONFIG word 0, then runs of
    consecutive addresses to random targets (several LOAD frames), some at the same addresses
    each job (so that a lost LOAD leaves another job's word behind)."""
    targets = [t for t in range(TARGETS) if info.target_bits[t]]
    jobs = []
    for _ in range(count):
        words = rnd.choice([1, 2, rnd.randint(1, 40)])
        beats = [(0, 0, words)]
        for _ in range(rnd.randint(0, 6)):
            target, start = rnd.choice(targets), rnd.randrange(1 << info.addr_bits)
            for addr in range(start, min(start + rnd.randint(1, 14), 1 << info.addr_bits)):
                if (target, addr) != (0, 0):
                    beats.append((target, addr, rnd.getrandbits(info.target_bits[target])))
        jobs.append((beats, words, rnd.choice(list(OutputFormat)) if info.code_bits else OutputFormat.FULL))
    return jobs


RATES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)


def session_case(rnd: random.Random, rate: float | None = None, *, dup_drop: bool = False,
                 info: LinkInfo = INFO, faults: Counter | None = None) -> tuple[str, str]:
    """A session set (:meth:`LinkHost.begin_session`, whose refusal after its retries is final: nothing repeats it),
    then two layer jobs through :meth:`LinkHost.load_and_run` over a :class:`FaultyPort` (rate drawn
    from :data:`RATES` unless given): the outcome and what happened (``faults`` adds up the
    faults injected)."""
    rate = rnd.choice(RATES) if rate is None else rate
    jobs = random_jobs(rnd, info)
    port = FaultyPort(FakeDevice(info), random.Random(rnd.getrandbits(64)), rate, dup_drop=dup_drop)
    host, repeats = LinkHost(port, retries=3, deadline=5.0), 3
    results, before, started = [], 0, False
    try:
        with within(BOUND_S, "a link session over a faulty port"):
            host.begin_session(rnd)     # as the runners do (seeded here): each DONE must state it
            started = True
            for beats, words, fmt in jobs:
                before = host.repeated
                results.append(host.load_and_run(beats, words, fmt, repeats=repeats))
    except Hang as e:
        return "hang", f"rate {rate}, faults {dict(port.faults)}: {e}"
    except NackError as e:      # a frame the line damaged: final only once the job's repeats are spent
        outcome = "clean error" if not started or host.repeated - before == repeats else "gave up early"
        return outcome, f"rate {rate}, faults {dict(port.faults)}, {host.repeated - before} repeats: {e}"
    except LinkError as e:
        return "clean error", f"{type(e).__name__}: {e}"
    except Exception as e:      # noqa: BLE001
        return crash(e)
    finally:
        if faults is not None:
            faults.update(port.faults)
    reference = FakeEngine(info)
    for (beats, words, fmt), got in zip(jobs, results):
        reference.apply(beats)
        expected = [reference.fields(w, fmt) for w in reference.output()[:words]]
        if got != expected:
            return "silent wrong answer", (f"rate {rate}, faults {dict(port.faults)}: {fmt.name} words {got} "
                                           f"instead of {expected}")
    recovered = host.retried + host.resyncs + host.repeated
    return ("recovered" if recovered else "correct"), f"rate {rate}, faults {dict(port.faults)}"


def random_info_payload(rnd: random.Random) -> bytes:
    """INFO payloads of random parameters, each field often at an edge (0, 1, the most) or valid: the head
    (version, mode, the 16-bit fields, the 32-bit build, the target count) and each target's width; the widths
    mostly as many as the count states, sometimes not. Each payload changes its fields at a rate of 0, 10% or 40%,
    so that usable INFOs are as common as refused ones."""
    valid = INFO.encode()
    head = list(struct.unpack_from(INFO_HEAD_FORMAT, valid))
    widths = list(struct.unpack_from(f"<{head[-1]}H", valid, INFO_HEAD_BYTES))
    bytes_fields = (0, 1, len(head) - 1)        # version, mode, target count: one byte each
    build_field = len(head) - 2                 # the build digest: 32 bits
    rate = rnd.choice([0.0, 0.1, 0.4])
    for i in range(len(head)):
        if rnd.random() < rate:
            top = 255 if i in bytes_fields else (1 << 32) - 1 if i == build_field else 65535
            head[i] = rnd.choice([0, 1, 2, 3, 7, 8, 9, top, rnd.randint(0, top)])
    for i in range(len(widths)):
        if rnd.random() < rate:
            widths[i] = rnd.choice([0, 1, 2, 3, 7, 8, 9, 65535, rnd.randint(0, 65535)])
    if rnd.random() < 0.9:
        widths = (widths + [rnd.choice([0, 8, 16])] * head[-1])[:head[-1]]
    return struct.pack(INFO_HEAD_FORMAT, *head) + struct.pack(f"<{len(widths)}H", *widths)


def info_case(rnd: random.Random) -> tuple[str, str]:
    """A device whose INFO states random parameters: the host refuses it (LinkError) or gets an INFO it
    can use (words of at least a byte, every target's word fits a LOAD payload)."""
    payload = random_info_payload(rnd)
    host = LinkHost(FaultyPort(FakeDevice(INFO, payload), random.Random(0), 0.0), retries=1, deadline=5.0)
    try:
        with within(BOUND_S, "reading a random INFO"):
            info = host.info
            assert info.encode() == payload, "the host took another INFO than the device sent"
            decode_words(bytes(info.out_bytes()), info)
            if info.code_bits:
                decode_words(bytes(info.out_bytes(OutputFormat.CODES)), info, OutputFormat.CODES)
            for target in range(info.targets):
                if info.target_bits[target]:
                    top = (1 << info.target_bits[target]) - 1
                    (load,) = encode_loads([(target, (1 << info.addr_bits) - 1, top)], info)
                    assert len(load) <= info.max_payload
            encode_run(1)
    except Hang as e:
        return "hang", str(e)
    except LinkError as e:
        return "clean error", str(e)
    except AssertionError as e:
        return "silent wrong answer", f"{payload.hex()}: {e}"
    except Exception as e:      # noqa: BLE001
        return crash(e)
    return "correct", payload.hex()


# ------------------------------------------------------------------------------- files

def _model_helpers():
    from test_model_file import DIGITS, raw_members, same, write_raw

    return DIGITS, raw_members, same, write_raw


MODEL_MUTATIONS = ("byte edits", "truncation", "member edit")


class ModelFiles:
    """Mutations of the committed digits model (``tests/test_model_file.py``'s file and helpers)."""

    def __init__(self, workdir: Path):
        from compiler import format as fmt

        self.fmt = fmt
        self.digits, self.raw_members, self.same, self.write_raw = _model_helpers()
        self.data = self.digits.read_bytes()
        self.entries = self.raw_members(self.digits)
        self.original = fmt.load(self.digits)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(workdir) / "fuzzed.lcq"

    def case(self, rnd: random.Random, kind: str | None = None) -> tuple[str, str]:
        kind = kind or rnd.choice(MODEL_MUTATIONS)
        if kind == "byte edits":
            self.path.write_bytes(byte_edits(self.data, rnd, tail=3000))
        elif kind == "truncation":
            self.path.write_bytes(self.data[:rnd.randrange(len(self.data))])
        else:       # a member's contents edited, the zip rewritten with valid CRCs
            i = rnd.randrange(len(self.entries))
            name, data = self.entries[i]
            how = rnd.choice(("bytes", "burst", "cut", "append"))
            new = (byte_edits(data, rnd) if how == "bytes" else burst(data, rnd) if how == "burst"
                   else data[:rnd.randrange(len(data))] if how == "cut" else data + noise(rnd, 64))
            self.write_raw(self.path, [*self.entries[:i], (name, new), *self.entries[i + 1:]])
            kind = f"member edit ({how} of {name})"
        try:
            with within(BOUND_S, f"loading a model file ({kind})"):
                loaded = self.fmt.load(self.path)
        except Hang as e:
            return "hang", f"{kind}: {e}"
        except self.fmt.ModelFormatError as e:
            if str(self.path) not in str(e):
                return "crash", f"{kind}: the error does not name the file: {e}"
            return "clean error", kind
        except Exception as e:      # noqa: BLE001
            return crash(e)
        return ("correct", kind) if self.same(loaded, self.original) else ("silent wrong answer", kind)


def _checkpoint_helpers():
    from test_checkpoint import FRAME, _tensors

    return FRAME, _tensors


def tiny_checkpoint(path: Path) -> Path:
    """A checkpoint of the digits CNN (LCQ W3/A3) as ``train`` writes one after its first epoch, without
    the training (seconds instead of half a minute)."""
    import torch
    from helpers import one_epoch_history

    from lcq_train.checkpoint import capture_rng, save_checkpoint
    from lcq_train.plan import QuantPlan
    from lcq_train.train import TrainConfig, _bits, _lr_lambda, build_quantized_model

    torch.manual_seed(0)
    cfg = TrainConfig(model="cnn", dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=1, batch_size=64,
                      out=str(path.parent / "run"), progress=False)
    model = build_quantized_model("cnn", (1, 8, 8), 10, cfg.plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    optimizer.step()                     # a momentum buffer per parameter, as after training
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(10, 1))
    layers = {k: list(v) for k, v in _bits(model, cfg.plan).items()}
    metrics = one_epoch_history(cfg.to_dict(), layers)
    save_checkpoint({"config": cfg.to_dict(), "plan": cfg.plan.to_dict(), "input_shape": [1, 8, 8],
                     "num_classes": 10, "layers": layers, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 1,
                     "rng": capture_rng(), "metrics": metrics}, path)
    return path


CHECKPOINT_MUTATIONS = ("byte edits", "truncation", "appended bytes")


class Checkpoints:
    """Mutations of :func:`tiny_checkpoint` (``tests/test_checkpoint.py``'s frame layout and helpers)."""

    def __init__(self, workdir: Path):
        from lcq_train.checkpoint import CheckpointError, load_checkpoint

        self.error, self.load = CheckpointError, load_checkpoint
        self.frame, self.tensors = _checkpoint_helpers()
        Path(workdir).mkdir(parents=True, exist_ok=True)
        source = tiny_checkpoint(Path(workdir) / "source.pt")
        self.blob = source.read_bytes()
        self.reference = self.load(source)
        self.path = Path(workdir) / "fuzzed.pt"

    def identical(self, state) -> bool:
        import torch

        a, b = self.tensors(state), self.tensors(self.reference)
        if a.keys() != b.keys() or any(a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
                                       or not torch.equal(a[k], b[k]) for k in a):
            return False
        strip = lambda s: {k: v for k, v in s.items() if k not in ("model", "optimizer", "scheduler")}  # noqa: E731
        return repr(strip(state)) == repr(strip(self.reference))

    def case(self, rnd: random.Random, kind: str | None = None) -> tuple[str, str]:
        kind = kind or rnd.choice(CHECKPOINT_MUTATIONS)
        if kind == "byte edits":
            # half of the edits in the frame (magic, version, header length, digest) and the header
            head = self.frame.size + 600
            damaged = byte_edits(self.blob[:head], rnd) + self.blob[head:] if rnd.random() < 0.5 \
                else byte_edits(self.blob, rnd)
        elif kind == "truncation":
            damaged = self.blob[:rnd.randrange(len(self.blob))]
        else:
            damaged = self.blob + noise(rnd, 64)
        self.path.write_bytes(damaged)
        try:
            with within(BOUND_S, f"loading a checkpoint ({kind})"):
                state = self.load(self.path)
        except Hang as e:
            return "hang", f"{kind}: {e}"
        except self.error as e:
            if str(self.path) not in str(e):
                return "crash", f"{kind}: the error does not name the file: {e}"
            return "clean error", kind
        except Exception as e:      # noqa: BLE001
            return crash(e)
        return ("correct", kind) if self.identical(state) else ("silent wrong answer", kind)


# ------------------------------------------------------------------------------- the tests

def fuzz(case, examples: int, *, derandomize: bool) -> Counter:
    """Run ``case(rnd)`` on ``examples`` hypothesis-drawn Randoms; every outcome must be one of
    :data:`GOOD`. Returns the outcomes' counts."""
    counts: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))
    def check(rnd):
        outcome, detail = case(rnd)
        counts[outcome] += 1
        assert outcome in GOOD, f"{outcome}: {detail}"

    check()
    return counts


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return ModelFiles(tmp_path_factory.mktemp("model-files"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


def test_mutated_frames_are_refused():
    counts = fuzz(frame_case, 300, derandomize=True)
    assert counts["clean error"] == sum(counts.values())


def test_random_info_replies_are_refused_or_usable():
    counts = fuzz(info_case, 150, derandomize=True)
    assert counts["clean error"] > 50 and counts["correct"] > 0, counts


def test_sessions_with_a_faulty_device_end_correct_recovered_or_in_a_link_error():
    started = time.monotonic()
    counts = fuzz(session_case, 250, derandomize=True)
    # the fault injection works: faults are recovered from, and some sessions fail cleanly
    assert counts["recovered"] > 25 and counts["clean error"] > 0 and counts["correct"] > 0, counts
    assert time.monotonic() - started < 60


def test_a_lost_and_a_duplicated_out_frame_never_give_a_silent_wrong_answer():
    """The ``dup+drop`` class: a RUN's OUT frames with one lost and another twice (the word count
    matches) end correct after a repeated layer run, never in wrong words (``fuzz`` fails on those)."""
    faults: Counter = Counter()
    counts = fuzz(lambda rnd: session_case(rnd, 0.0, dup_drop=True, faults=faults), 150, derandomize=True)
    assert counts["recovered"] == faults["dup+drop"] > 30, (counts, faults)


def test_mutated_model_files_fail_cleanly_or_load_identical(model_files):
    counts = fuzz(model_files.case, 45, derandomize=True)
    assert counts["clean error"] > 30, counts


def test_mutated_checkpoints_fail_cleanly(checkpoints):
    counts = fuzz(checkpoints.case, 60, derandomize=True)
    assert counts["clean error"] == sum(counts.values()) >= 50, counts


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.parametrize("case, examples", [("frame", 20_000), ("info", 5_000), ("session", 10_000),
                                            ("dup+drop", 5_000), ("model file", 1_000), ("checkpoint", 2_000)])
def test_long_fuzz_campaign(case, examples, request):
    """``pytest -m fuzz``: random (not derandomized) campaigns, minutes each."""
    cases = {"frame": frame_case, "info": info_case, "session": session_case,
             "dup+drop": lambda rnd: session_case(rnd, 0.0, dup_drop=True),
             "model file": lambda rnd: request.getfixturevalue("model_files").case(rnd),
             "checkpoint": lambda rnd: request.getfixturevalue("checkpoints").case(rnd)}
    counts = fuzz(cases[case], examples, derandomize=False)
    assert sum(counts.values()) >= examples


# ------------------------------------------------------------------------------- the fake against the bridge

def damaged_request(rnd: random.Random) -> bytes:
    """A request as the host sends one (PING, a LOAD of 1 to 3 words, a RUN or RESULT of 0 to 3 words, a SESSION), or
    now and then one of another type or length, mutated one way (:data:`FRAME_MUTATIONS`, a burst over the whole
    frame as :class:`FaultyPort` damages requests, or none) and sometimes after noise."""
    kind = rnd.choice(["PING", "LOAD", "LOAD", "RUN", "RESULT", "SESSION", "other"])
    if kind == "PING":
        frame = encode_frame(FrameType.PING)
    elif kind == "LOAD":
        target = rnd.choice([t for t in range(INFO.targets) if INFO.target_bits[t]])
        start = rnd.randrange(60)
        beats = [(target, start + i, rnd.getrandbits(INFO.target_bits[target])) for i in range(rnd.randint(1, 3))]
        frame = encode_frame(FrameType.LOAD, encode_loads(beats, INFO)[0])
    elif kind == "SESSION":
        frame = encode_frame(FrameType.SESSION, encode_session(rnd.randrange(1, 1 << SESSION_BITS)))
    elif kind in ("RUN", "RESULT"):
        frame = encode_frame(FrameType[kind], encode_run(rnd.randint(0, 3), rnd.choice(list(OutputFormat))))
    else:
        frame = encode_frame(rnd.choice([*FrameType, rnd.getrandbits(8)]), noise(rnd, 8) if rnd.random() < 0.8 else b"")
    how = rnd.choice([*FRAME_MUTATIONS, "line burst", "none"])
    data = burst(frame, rnd) if how == "line burst" else frame if how == "none" else mutate_frame(frame, how, rnd)
    return (noise(rnd, 4) if rnd.random() < 0.2 else b"") + data


def test_fake_device_answers_damaged_requests_as_the_bridge_does():
    """:class:`FakeDevice` and the bridge of :mod:`hw.link` in Amaranth's simulator (``tests/test_link.py``'s
    SimPort, the bridge of :data:`INFO`), each given the same 160 seeded damaged requests, their bytes back to back:
    the same reply frames (OUT frames left out and DONE's count, which differ with the engine: the recording
    engine's words are its load beats; DONE's session compared) and the same load beats reach the engine. So the
    early TYPE and LENGTH NACKs, TIMEOUT's type byte, and the bytes dropped after a refusal are the bridge's own.
    The 160 draw every kind of request and of damage, and every kind of reply that 300 drew (checked below):
    silence, INFO, ACK, DONE, CRC, LENGTH and TIMEOUT NACKs of each request type, TIMEOUT before a type byte,
    TYPE NACKs of type 0 and of others, a TARGET NACK."""
    pytest.importorskip("amaranth")
    from test_link import SimPort, split_frames

    def summary(data: bytes) -> list:
        return [(f[1], decode_done(f[4:-CRC_BYTES])[1] if f[1] == FrameType.DONE else f[4:-CRC_BYTES])
                for f in split_frames(data) if f[1] != FrameType.OUT]

    def reply(port) -> bytes:
        """What the bridge sends until it has been quiet for 200 cycles (its drain waits 64)."""
        got = b""
        while more := port.read(1 << 16):
            got += more
        return got

    port, session, replies = None, 0, set()
    for seed in range(160):
        if port is None or len(port.beats) > 40:    # the recording engine keeps 64 beats
            port, session = SimPort(gap=1, stall=False, timeout=200), 0
        data = damaged_request(random.Random(seed))
        fake, beats = FakeDevice(), []
        fake.session = session          # the bridge keeps its session from request to request
        fake.engine.apply = lambda got: beats.extend(got)
        expected = summary(b"".join(fake.receive(data)))
        before = len(port.beats)
        port.write(data)
        got = summary(reply(port))
        assert (got, port.beats[before:]) == (expected, beats), f"seed {seed}: {data.hex()}"
        session = fake.session
        replies.add(tuple((t, *(p[:1] + bytes([min(p[1], FrameType.SESSION + 1)]) if t == FrameType.NACK else b""))
                          for t, p in got))
    requests = (FrameType.PING, FrameType.LOAD, FrameType.RUN, FrameType.RESULT, FrameType.SESSION)
    assert replies == {(), ((FrameType.INFO,),), ((FrameType.ACK,),), ((FrameType.DONE,),),
                       *(((FrameType.NACK, code, t),) for code in (NackCode.CRC, NackCode.LENGTH, NackCode.TIMEOUT)
                         for t in requests),
                       ((FrameType.NACK, NackCode.TIMEOUT, 0),), ((FrameType.NACK, NackCode.TYPE, 0),),
                       ((FrameType.NACK, NackCode.TYPE, FrameType.SESSION + 1),),
                       ((FrameType.NACK, NackCode.TARGET, FrameType.LOAD),)}


# ------------------------------------------------------------------------------- each fault alone

def _one_job(seed: int = 3):
    return random_jobs(random.Random(seed), count=1)[0]


class ScriptedPort(FaultyPort):
    """A fault-free port whose ``n``-th reply frame of each type (``damage[(type, n)]``) is replaced
    by what ``damage`` maps it to."""

    def __init__(self, damage: dict):
        super().__init__(FakeDevice(), random.Random(0), 0.0)
        self.damage, self.seen = damage, Counter()

    def _reply(self, frames):
        out = b""
        for frame in frames:
            key = (frame[1], self.seen[frame[1]])
            self.seen[frame[1]] += 1
            out += self.damage.get(key, frame)
        return out


def _expected(beats, words, fmt):
    engine = FakeEngine(INFO)
    engine.apply(beats)
    return [engine.fields(w, fmt) for w in engine.output()[:words]]


@pytest.mark.parametrize("name, damage", [
    ("corrupted OUT", lambda f: {(FrameType.OUT, 0): f[:8] + bytes([f[8] ^ 0x40]) + f[9:]}),      # its first word
    ("lost DONE", lambda f: {(FrameType.DONE, 0): b""}),
    ("truncated ACK", lambda f: {(FrameType.ACK, 0): encode_frame(FrameType.ACK)[:3]}),
    ("noise before INFO", lambda f: {(FrameType.INFO, 0): b"\x00\x13" + encode_frame(FrameType.INFO, INFO.encode())}),
    ("empty OUT", lambda f: {(FrameType.OUT, 0): encode_frame(FrameType.OUT) + f}),
    ("OUT of no words", lambda f: {(FrameType.OUT, 0): encode_frame(FrameType.OUT, encode_out(0, b"")) + f}),
    ("duplicated OUT", lambda f: {(FrameType.OUT, 0): f + f}),
])
def test_each_reply_fault_is_recovered(name, damage):
    beats, words, fmt = _one_job()
    device = FakeDevice()
    device.engine.apply(beats)
    out = next(f for f in device.run(encode_run(words, fmt)) if f[1] == FrameType.OUT)
    port = ScriptedPort(damage(out))
    host = LinkHost(port, retries=2, deadline=5.0)
    with within(10, "the link host"):
        assert host.load_and_run(beats, words, fmt) == _expected(beats, words, fmt)
    assert host.retried + host.repeated + host.resyncs >= 1


def test_a_lost_and_a_duplicated_out_frame_are_refused_and_the_layer_run_again():
    """A RUN of 20 words in OUT frames of 9, 9 and 2: the first frame twice and the second lost, or
    the first lost and the second twice (the word count matches either way). The host refuses the
    frame that does not start at the next word; :meth:`LinkHost.load_and_run` runs the layer again."""
    beats, words, fmt = [(0, 0, 20), (1, 5, 77), (3, 6, 12345)], 20, OutputFormat.FULL
    device = FakeDevice()
    device.engine.apply(beats)
    outs = [f for f in device.run(encode_run(words, fmt)) if f[1] == FrameType.OUT]
    assert [len(decode_frame(f).payload) for f in outs] == [4 + 27, 4 + 27, 4 + 6]
    out = FrameType.OUT
    for damage, message in (({(out, 0): outs[0] + outs[0], (out, 1): b""},
                             r"OUT frame of words 0\.\.8 in RUN output \(word 9 of 20, or DONE\): it arrived twice or "
                             r"out of order on the line; check the cable and baud rate"),
                            ({(out, 0): b"", (out, 1): outs[1] + outs[1]},
                             r"OUT frame of words 9\.\.17 in RUN output \(word 0 of 20, or DONE\): the frames before "
                             r"it were lost on the line")):
        host = LinkHost(ScriptedPort(damage), retries=2, deadline=5.0)
        host.load(beats)
        with within(10, "the link host"), pytest.raises(FrameError, match=message):
            host.run(words, fmt)
        host = LinkHost(ScriptedPort(damage), retries=2, deadline=5.0)
        with within(10, "the link host"):
            assert host.load_and_run(beats, words, fmt) == _expected(beats, words, fmt)
        assert host.repeated == 1


class ResettingPort(FaultyPort):
    """A fault-free port whose device is reset (:meth:`FakeDevice.reset`) just before request ``at`` (from 0)."""

    def __init__(self, at: int):
        super().__init__(FakeDevice(), random.Random(0), 0.0)
        self.at, self.requests = at, 0

    def write(self, data: bytes) -> None:
        if self.requests == self.at:
            self.device.reset()
        self.requests += 1
        super().write(data)


def test_a_session_drawn_from_a_seeded_generator_repeats_and_the_campaign_with_it():
    """The fuzz campaign repeats itself from its seed: the host's session value, part of every DONE the faults
    damage, is drawn from the case's generator (the system's draw made 1 in 10,000 sessions differ)."""
    values = {LinkHost(FaultyPort(FakeDevice(), random.Random(0), 0.0)).begin_session(random.Random(7))
              for _ in range(3)}
    assert values == {random.Random(7).randrange(1, 1 << SESSION_BITS)}


def test_a_device_reset_at_any_request_of_a_session_is_caught_or_harmless():
    """Layers mode, as :class:`boards.runtime.BoardRunner` runs (a session, then layer jobs): the device reset just
    before each request in turn. Before the SESSION (the PING the host sends first) it is harmless; from the
    SESSION on, the engine has lost what was loaded, and the next DONE (every reset here comes before the last
    one) ends the session in a BoardReset: never words of an engine that lost its loads."""
    jobs = random_jobs(random.Random(5), count=3)
    clean = ResettingPort(-1)
    host = LinkHost(clean)
    host.begin_session()
    expected = [host.load_and_run(beats, words, fmt) for beats, words, fmt in jobs]
    outcomes = []
    for at in range(clean.requests):
        host = LinkHost(ResettingPort(at), retries=1)
        try:
            with within(10, "the link host"):
                host.begin_session()
                got = [host.load_and_run(beats, words, fmt) for beats, words, fmt in jobs]
        except BoardReset as e:
            assert "states session 0x00," in str(e) and "the board was reset" in str(e)
            outcomes.append("reset")
        else:
            assert got == expected, f"reset before request {at}: wrong words"
            outcomes.append("correct")
    assert outcomes == ["correct"] * 2 + ["reset"] * (clean.requests - 2)


def test_a_device_that_never_stops_sending_is_refused_within_the_bound():
    """Noise forever: resync drains at most ``drain_bytes`` (and a few reads cut short) and gives up;
    a device that answers a RUN with empty OUT frames forever, and one whose INFO states 0-byte
    words, end in a FrameError."""
    class Babbler:
        def write(self, data):
            pass

        def read(self, n):
            return bytes(random.getrandbits(8) for _ in range(min(n, 64)))

    with within(10, "the link host"), pytest.raises(LinkNoise, match=r"the line did not go quiet while "
                                                    r"resynchronizing: .* the device keeps sending: check the baud "
                                                    r"rate"):
        LinkHost(Babbler(), drain_bytes=10_000).resync()

    class EmptyOuts(FaultyPort):
        def _reply(self, frames):
            return b"".join(frames) if frames[0][1] != FrameType.OUT else encode_frame(FrameType.OUT) * 1000

    host = LinkHost(EmptyOuts(FakeDevice(), random.Random(0), 0.0), retries=2)
    beats, words, fmt = _one_job()
    with within(10, "the link host"), pytest.raises(FrameError, match=r"empty OUT frame in RUN output \(word 0 of"):
        host.load_and_run(beats, words, fmt)
    assert host.repeated == 2

    zero = LinkInfo(PROTOCOL_VERSION, 6, 0, 3, 4, 32, 0, INFO.target_bits).encode()
    host = LinkHost(FaultyPort(FakeDevice(INFO, zero), random.Random(0), 0.0), retries=1)
    with within(10, "the link host"), pytest.raises(FrameError, match=r"impossible parameters \(out_bits 0: output "
                                                     r"words of 0 bytes"):
        host.info
