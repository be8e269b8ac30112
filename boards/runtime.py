"""Host runtime: a compiled model on a board (or a simulated one) over the link.

A bitstream runs in one of two modes (:data:`MODES`, stated in its INFO reply,
:class:`hw.protocol.LinkMode`); each runner refuses a board of the other mode, and one whose INFO states
other widths or another build digest (:func:`hw.network_params.build_digest`) than the parameters it uses
(:func:`check_build`: a build whose memories have other depths).

:class:`NetworkRunner` (network mode, the whole-network core): loads the model's constants and
program once (:func:`hw.network_program.load_beats`), then per image its pixels
(:func:`hw.network_program.image_beats`), sent while the image before runs (the core stages them),
RESULT collecting the image before's ``num_classes`` logits, and a RUN of 0 words starting it.

:class:`BoardRunner` (layers mode, the layer engine) loads what the engine keeps for every layer (its weights, or all its
constants, by the engine's residency), then classifies images: each convolution runs on
the board (configuration, the constants not kept and the input activations over the link,
output words back; codes only for thresholded layers), every host-side node (input table,
residual additions, activations, pooling) in the integer reference, exactly as
:func:`hw.program.model_jobs` lays out. Results are the integer logits, so they can be
compared image for image with ``compiler.reference.predict``.

Each runner sets a new session on the board before it loads the model (:meth:`LinkHost.begin_session`), so that a
board reset or reconfigured since (the model gone) ends the run in a :class:`hw.protocol.BoardReset` at the next
DONE, never in logits computed without the model; the next ``classify`` or ``logits`` loads the model again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from compiler.graph import CompiledModel, ConvNode, Thresholds
from compiler.reference import check_images
from hw.engine_params import EngineParams
from hw.network_params import NetworkParams, build_digest
from hw.network_program import decode_logits, image_beats, load_beats
from hw.program import model_jobs, resident_beats
from hw.protocol import LinkError, LinkInfo, LinkMode, NackCode, NackError, OutputFormat

from .link_host import LinkHost, Refusals, recoverable

MODES = tuple(mode.label for mode in LinkMode)     # "layers", "network": what `lcq build --mode` takes


def output_format(node: ConvNode) -> OutputFormat:
    """How a RUN of layer ``node`` asks for its words: activation codes after thresholds."""
    return OutputFormat.CODES if isinstance(node.stage, Thresholds) else OutputFormat.FULL


@dataclass
class RunResult:
    """Logits ``(N, classes)``, predictions, and the link's pace: ``seconds`` for the images,
    ``load_seconds`` for loading the resident constants before them."""

    logits: np.ndarray
    seconds: float
    labels: np.ndarray | None = None
    load_seconds: float = 0.0

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def images_per_second(self) -> float:
        return len(self.logits) / self.seconds if self.seconds else 0.0

    @property
    def accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return float((self.predictions == self.labels).mean() * 100)


# The fix where a board's INFO states a core other than the one the host computed from the model and the build
# report (lcq run checks the report against the model before): the report is not of the build on the port.
OTHER_BUILD = ("the board on the port runs another build than the report describes; pass the report.json of the "
               "build on that port (--report FILE), or build and flash this model's (`lcq build MODEL --board NAME`, "
               "`lcq flash --board NAME`)")


def check_build(info: LinkInfo, params: EngineParams | NetworkParams, core: str) -> None:
    """A :class:`LinkError` naming both digests and the fix when the board's bitstream states another build digest
    (INFO's ``build``) than :func:`hw.network_params.build_digest` of ``params``, the parameters the host is about
    to use (``core``: what the board runs, as the error names it): a build of the same widths whose other
    parameters (a memory's depth, say) differ, which the host would drive past its memories."""
    expected = build_digest(params)
    if info.build != expected:
        raise LinkError(f"the board's {core} states build 0x{info.build:08x}, not the 0x{expected:08x} of the "
                        f"{core} built for this model (the digest of its parameters, memory depths included; "
                        f"which of them differ cannot be told from INFO, whose other fields agree): {OTHER_BUILD}")


def check_mode(info: LinkInfo, expected: LinkMode) -> None:
    """A :class:`LinkError` naming both modes and the fix when the board's bitstream runs in another
    mode than the host expects (from the build report)."""
    if info.mode != expected:
        got, want = LinkMode(info.mode).label, expected.label
        raise LinkError(f"the board's bitstream runs in {got} mode, but the host was asked to run it in {want} "
                        f"mode (from the build report): pass the report.json of the flashed build (--report FILE), "
                        f"or build and flash a {want}-mode bitstream (`lcq build MODEL --board NAME --mode {want}`, "
                        f"`lcq flash --board NAME`)")


class _Runner:
    """What both runners share: ``classify`` over ``logits`` after ``load_constants``, and whether the model is
    loaded: only ever in a session this runner set, so that a board reset since is always caught."""

    model: CompiledModel
    host: LinkHost
    _session: int | None = None     # the host's session the model was loaded (or assumed loaded) in
    _settle_words = 1               # the words a RESULT that stops the core asks for (layers mode: beyond are dropped)

    @property
    def loaded(self) -> bool:
        """Whether the model is on the board in the host's current session (:meth:`load_constants` or
        :meth:`assume_loaded` set it); False once that session is lost (a board reset, another host's session)."""
        return self._session is not None and self.host.session == self._session

    def assume_loaded(self) -> None:
        """Take the model as already on the board without sending it (an earlier program loaded it, and the board
        was not reset since: the caller's word): a new session is set (:meth:`LinkHost.begin_session`; it keeps
        the board's constants), so that a board reset from now on ends a run in a
        :class:`hw.protocol.BoardReset`, as after :meth:`load_constants`. A board reset or configured since a host
        last set a session (the session its DONE states is 0: the model is certainly gone) is refused, a
        :class:`LinkError` saying to load the model; the RESULT that reads it also stops a core left running."""
        self.host.settle(self._settle_words)
        if self.host.stated_session == 0:
            raise LinkError("the board states session 0x00: it was reset or configured since a host last set one, so "
                            "the model is not on it (assume_loaded takes it as loaded); load it (classify, or "
                            "load_constants) and run again")
        self.host.begin_session()
        self._session = self.host.session

    def classify(self, images: np.ndarray, labels: np.ndarray | None = None, progress=None) -> RunResult:
        """Logits of every image of ``images`` (uint8 ``(N, C, H, W)``), with ``labels`` (N integer classes) for the
        accuracy; images or labels of another shape or type are refused (ValueError) before anything is sent."""
        check_images(self.model, np.asarray(images))
        if labels is not None:
            labels = np.asarray(labels)
            classes = self.model.num_classes
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or len(labels) and (
                    labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"labels must be {len(images)} integer classes 0..{classes - 1}, one per image; got "
                                 f"{labels.dtype} of shape {labels.shape}")
        t0 = time.perf_counter()
        self.load_constants()
        t1 = time.perf_counter()
        out = self._all_logits(images, progress)
        logits = np.stack(out) if out else np.zeros((0, self.model.num_classes), dtype=np.int64)
        return RunResult(logits, time.perf_counter() - t1, labels, load_seconds=t1 - t0)

    def _all_logits(self, images: np.ndarray, progress) -> list[np.ndarray]:
        """The logits of each image, in order, one image after the other (``progress(done, total)`` after each)."""
        out = []
        for i, image in enumerate(images):
            out.append(self.logits(image))
            if progress:
                progress(i + 1, len(images))
        return out


class NetworkRunner(_Runner):
    """Runs ``model`` on the whole-network core of ``params`` behind ``host`` (a :class:`LinkHost`):
    image in, logits out. The device's INFO must state network mode and match ``params`` (its widths, and its
    build digest: :func:`check_build`) and the model's class count; otherwise a :class:`LinkError` says what to
    build and flash. ``repeated``
    counts image runs repeated after a lost or corrupted reply (up to ``retries`` per image; an
    image's beats are idempotent, so its LOADs and RUN are sent again whole).

    :meth:`classify` overlaps the link with compute: the core stages one image's pixels while it runs
    another, so per image ``i`` the host sends LOAD (its pixels, staged while image ``i - 1`` runs),
    RESULT (image ``i - 1``'s logits; the core is then idle), RUN of 0 words (start image ``i``, which
    returns once the core has taken the staged pixels), and after the last image its RESULT. A core that an
    earlier session left running (it ended mid-image) is stopped first (:meth:`_idle`)."""

    def __init__(self, host: LinkHost, model: CompiledModel, params: NetworkParams, *, retries: int = 2):
        info = host.info
        check_mode(info, LinkMode.NETWORK)
        expected = (params.addr_bits, params.target_bits, params.value_bits, params.engine.rows, params.engine.cols,
                    model.num_classes)
        got = (info.addr_bits, info.target_bits, info.out_bits, info.rows, info.cols, info.classes)
        if got != expected:
            raise LinkError(f"the board's network core (address bits, target bits, logit bits, rows, cols, classes "
                            f"= {got}) is not the one built for this model ({expected}): {OTHER_BUILD}")
        check_build(info, params, "network core")
        self.host, self.model, self.params = host, model, params
        self.retries, self.repeated = retries, 0
        self._settle_words = model.num_classes      # a running image's logits stay in the core past those asked for

    def load_constants(self) -> None:
        """A new session (:meth:`LinkHost.begin_session`), then every constant and the program: once, and again
        after the host lost the session they were loaded in (a :class:`hw.protocol.BoardReset`)."""
        if not self.loaded:
            self.host.begin_session()
            self._idle(lambda: self.host.load(load_beats(self.model, self.params)))
            self._session = self.host.session

    def _idle(self, request):
        """``request()``, which needs the core idle. A core still running an image of a session that ended
        mid-image (Ctrl-C or an error after its start) refuses it with NACK BUSY: its logits are collected and
        dropped (:meth:`LinkHost.settle`) and ``request`` is sent once more."""
        try:
            return request()
        except NackError as error:
            if error.code != NackCode.BUSY:
                raise
            self.host.settle(self.model.num_classes)
            return request()

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Integer logits ``(classes,)`` of one uint8 image ``(C, H, W)``, not overlapped: its pixels, then a RUN
        that waits for them (the core must not be running: :meth:`classify` leaves it idle)."""
        beats = image_beats(self.model, self.params, image)     # checks the image before anything is sent
        self.load_constants()
        before = self.host.repeated
        try:
            words = self._idle(lambda: self.host.load_and_run(beats, self.model.num_classes, OutputFormat.FULL,
                                                              repeats=self.retries))
        finally:
            self.repeated += self.host.repeated - before
        return decode_logits(self.params, words, self.model.num_classes)

    def _all_logits(self, images: np.ndarray, progress) -> list[np.ndarray]:
        """The logits of each image, pipelined (see the class): a reply that goes wrong is recovered by
        :meth:`_recover`. ``progress(done, total)`` after each image's logits."""
        classes, host = self.model.num_classes, self.host
        out: list[np.ndarray | None] = [None] * len(images)
        attempts = [0] * len(images)

        def collect(index: int, words: list[int]) -> None:
            out[index] = decode_logits(self.params, words, classes)
            if progress:
                progress(sum(x is not None for x in out), len(images))

        n, i = len(images), 0
        staged = running = None     # the image whose pixels the core holds, not started; the image it runs
        while i < n or staged is not None or running is not None:
            try:
                if i < n and staged is None:
                    host.load(self._beats(images, i))
                    staged, i = i, i + 1
                if running is not None:
                    collect(running, host.result(classes))
                    running = None
                if staged is not None:
                    self._idle(host.start)
                    running, staged = staged, None
            except LinkError as error:
                if not recoverable(error):
                    raise
                if running is not None:     # its RESULT went wrong (or the next image's LOAD): run it again
                    lost, running = running, None
                elif staged is not None:    # its start went wrong: the core may or may not run it
                    lost, staged = staged, None
                else:                       # its LOAD went wrong, nothing running
                    lost, i = i, i + 1
                collect(lost, self._recover(error, images, lost, staged, attempts))
        return out

    def _recover(self, error: LinkError, images: np.ndarray, lost: int, staged: int | None,
                 attempts: list[int]) -> list[int]:
        """After ``error`` (a reply that went wrong): resync, stop the core (collect and drop what it holds),
        run image ``lost`` again the blocking way (LOAD, RUN of ``classes`` words) and stage image ``staged``
        again (its pixels were overwritten); up to ``retries`` times per image, each counted in ``repeated`` (a NACK
        that ends it counts the refusals of all the image's tries). Returns ``lost``'s logit words."""
        classes, host = self.model.num_classes, self.host
        refused = Refusals()
        refused.add(error)
        while True:
            if attempts[lost] == self.retries:
                raise refused.final(error)
            attempts[lost] += 1
            self.repeated += 1
            try:
                host.resync()
                host.settle(classes)
                host.load(self._beats(images, lost))
                words = host.run(classes)
                if staged is not None:
                    host.load(self._beats(images, staged))
                return words
            except LinkError as e:
                refused.add(e)
                if not recoverable(e):
                    raise refused.final(e)
                error = e

    def _beats(self, images: np.ndarray, index: int) -> list[tuple[int, int, int]]:
        return image_beats(self.model, self.params, images[index])


class BoardRunner(_Runner):
    """Runs ``model`` on the engine of ``params`` behind ``host`` (a :class:`LinkHost`), layers mode.

    ``resident`` (``"none"``, ``"weights"``, ``"all"``) is the residency ``params`` were sized
    for; ``repeated`` counts layer runs repeated after a lost or corrupted reply. The
    device's INFO must match ``params`` (widths, rows, cols, and the build digest: :func:`check_build`): otherwise
    the board runs another build, and a :class:`LinkError` says to build and flash this one.
    """

    def __init__(self, host: LinkHost, model: CompiledModel, params: EngineParams, resident: str, *,
                 retries: int = 2):
        info = host.info
        check_mode(info, LinkMode.LAYERS)
        expected = (params.addr_bits, params.target_bits, params.cols * params.out_bits, params.code_bits,
                    params.rows, params.cols)
        got = (info.addr_bits, info.target_bits, info.out_bits, info.code_bits, info.rows, info.cols)
        if got != expected:
            raise LinkError(f"the board's engine (address bits, target bits, output bits, code bits, rows, cols "
                            f"= {got}) is not the one built for this model ({expected}): {OTHER_BUILD}")
        check_build(info, params, "engine")
        self.host, self.model, self.params, self.resident = host, model, params, resident
        self.retries, self.repeated = retries, 0

    def load_constants(self) -> None:
        """A new session (:meth:`LinkHost.begin_session`; also for ``"none"``: a layer's constants are lost in a
        reset between its LOADs and its RUN), then what the engine keeps of every layer (nothing for ``"none"``):
        once, and again after the host lost the session they were loaded in (a :class:`hw.protocol.BoardReset`)."""
        if not self.loaded:
            self.host.begin_session()
            if self.resident != "none":
                self.host.load(resident_beats(self.model, self.params, self.resident))
            self._session = self.host.session

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Integer logits ``(classes,)`` of one uint8 image ``(C, H, W)``."""
        self.load_constants()
        steps = model_jobs(self.model, self.params, image, resident=self.resident)
        try:
            job = next(steps)
            while True:
                job = steps.send(self._run_job(job))
        except StopIteration as done:
            tensors = done.value
        return tensors[self.model.logits].reshape(-1)

    def _run_job(self, job) -> list[int]:
        """One layer on the board: its beats, then RUN. A reply that is corrupted or stops
        arriving (the device's bytes to the host have no retry of their own) is recovered
        by draining the line, pinging and running the layer again, up to ``retries`` times;
        every layer run is idempotent (the job brings all the engine does not keep):
        :meth:`LinkHost.load_and_run`, whose bounded retries and deadlines end every wait."""
        before = self.host.repeated
        try:
            return self.host.load_and_run(job.beats, job.out_words, output_format(job.node), repeats=self.retries)
        finally:
            self.repeated += self.host.repeated - before
