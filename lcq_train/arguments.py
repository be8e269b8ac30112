"""Range-checked values for every stage's command line (argparse ``type=``) and files (no torch, no numpy).

Each checker is both an argparse type and a validator, so that an option, a JSON config file and a
saved run are held to one rule:

- ``parser.add_argument("--epochs", type=positive_int)`` turns the option's text into a value or
  stops with ``lcq train: error: argument --epochs: must be an integer >= 1, not '0'`` (argparse
  names the option, the checker states the allowed range);
- ``positive_int.check(value, "epochs")`` applies the same rule to a value that did not come from
  the command line (a config file, a checkpoint, a dataclass) and raises ValueError naming it.

``IntRange(lo, hi)`` and ``FloatRange(lo, hi, lo_open=...)`` make new ones (floats are always
finite); :data:`positive_int`, :data:`nonnegative_int`, :data:`positive_float`,
:data:`nonnegative_float` and :data:`probability` are the common ones. :class:`DefaultsHelpFormatter` shows
each option's default in the help, but not None (an option whose default is decided later says how itself).
:func:`torch_device` checks a ``--device`` (it imports torch only when called); :func:`default_device` is the
device a run takes when none is given; :func:`output_file` is a file to write (``-o``), not a directory, and
:func:`refuse_overwriting` stops one that is the command's input.
:func:`given_options` tells the options a command line gives from those it leaves at their defaults.
:func:`counted` is a count with its noun for a command's output (``1 image``, ``2 images``).
"""

from __future__ import annotations

import argparse
import math
import os
import stat

__all__ = ["IntRange", "FloatRange", "DefaultsHelpFormatter", "positive_int", "nonnegative_int", "positive_float",
           "nonnegative_float", "probability", "learning_rate", "quantizer_rate", "decay_rate", "torch_device",
           "device_problem", "default_device", "output_file", "refuse_overwriting", "given_options", "counted"]


class IntRange:
    """An integer in ``lo..hi`` (None: unbounded), or one of the values in ``also`` (e.g. 0 for "none")."""

    kind = "integer"

    def __init__(self, lo: int | None = None, hi: int | None = None, *, also: tuple[int, ...] = ()):
        self.lo, self.hi, self.also = lo, hi, tuple(also)
        self.__name__ = self.describe()          # argparse's fallback messages use the type's name

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"an integer in {self.lo}..{self.hi}"
        elif self.lo is not None:
            text = f"an integer >= {self.lo}"
        elif self.hi is not None:
            text = f"an integer <= {self.hi}"
        else:
            text = "an integer"
        return " or ".join([*(str(v) for v in self.also), text])

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value in self.also or ((self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi))

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}")
        return value

    def check(self, value, name: str) -> int:
        """``value`` if it passes, else ValueError ``"{name} must be ..., not ..."``."""
        if not self.accepts(value):
            raise ValueError(f"{name} must be {self.describe()}, not {value!r}")
        return value

    def __repr__(self) -> str:
        return f"IntRange({self.lo}, {self.hi}{f', also={self.also}' if self.also else ''})"


class FloatRange:
    """A finite number in ``[lo, hi]`` (``lo_open``: ``(lo, hi]``; None: unbounded)."""

    kind = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open
        self.__name__ = self.describe()

    def describe(self) -> str:
        low = None if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if low and self.hi is not None:
            if not self.lo_open:
                return f"a number in [{self.lo:g}, {self.hi:g}]"
            return f"a number {low} and <= {self.hi:g}"
        if low:
            return f"a finite number {low}"
        if self.hi is not None:
            return f"a finite number <= {self.hi:g}"
        return "a finite number"

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}")
        return value

    def check(self, value, name: str) -> float:
        """``float(value)`` if it passes, else ValueError ``"{name} must be ..., not ..."``."""
        if not self.accepts(value):
            raise ValueError(f"{name} must be {self.describe()}, not {value!r}")
        return float(value)

    def __repr__(self) -> str:
        return f"FloatRange({self.lo}, {self.hi}, lo_open={self.lo_open})"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None (an option whose default is decided later: its help says how)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


positive_int = IntRange(1)
nonnegative_int = IntRange(0)
positive_float = FloatRange(0.0, lo_open=True)
nonnegative_float = FloatRange(0.0)
probability = FloatRange(0.0, 1.0)
# the trainer's rates (its float32 parameters overflow long before 1e38; no SGD setting needs more)
learning_rate = FloatRange(0.0, 1000.0, lo_open=True)       # --lr
quantizer_rate = FloatRange(0.0, 1000.0)                    # --q-lr (0: quantizers frozen)
decay_rate = probability                                    # --weight-decay


def output_file(text: str) -> str:
    """A file to write (argparse type): not empty (the working directory), not an existing directory and not a
    path ending in a separator (which the file would otherwise silently be written beside, under the directory's
    name), and not an existing named pipe, socket or device (``/dev/stdout``): files are written whole and renamed
    over the path, which would replace the pipe or device, and a benchmark that first reads its earlier results
    there would wait for a writer forever."""
    if not text:
        raise argparse.ArgumentTypeError("must name a file to write, not ''")
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must name a file to write, not a directory: {text!r}")
    try:
        mode = os.stat(text).st_mode
    except (OSError, ValueError):         # none yet (or a name the system refuses: said when it is written)
        return text
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None)
    if kind is not None:
        raise argparse.ArgumentTypeError(f"must name a file to write, not {kind}: {text!r}")
    return text


def refuse_overwriting(written: str | os.PathLike, given: str | os.PathLike, what: str, output: str) -> None:
    """FileExistsError where the file a command writes (``written``, for its ``-o output``) is the input file
    ``given`` (by any path: a link, ``./``), which writing it would replace."""
    if os.path.exists(written) and os.path.exists(given) and os.path.samefile(written, given):
        raise FileExistsError(f"-o {output}: writing {written} would replace the {what} {given}; name another file")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``plural`` or ``noun + "s"``) unless ``n`` is 1; thousands separated."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, object]:
    """The options that command line ``argv`` gives, as ``parser`` (one without subcommands) reads it: each one's
    ``dest`` -> the value the command line alone sets, whatever the option's default. An option given at its
    default value is given; an abbreviated long option counts as the option (where the parser allows
    abbreviations); an ``append`` option's value is the command line's items alone, without the default's.
    Stops with ``parser.error`` where ``parse_args`` would."""
    unset = object()
    # append/extend/append_const and count build on the value before them: they start from a fresh list or None
    # (a list is copied before it grows, so the command line's is another object), every other from ``unset``
    start = {a.dest: [] if isinstance(a, (argparse._AppendAction, argparse._AppendConstAction)) else
             None if isinstance(a, argparse._CountAction) else unset
             for a in parser._actions if a.dest != argparse.SUPPRESS}
    probe = parser.parse_args(argv, argparse.Namespace(**start))
    return {dest: value for dest, value in vars(probe).items() if dest in start and value is not start[dest]}


def device_problem(name: str) -> str | None:
    """Why torch cannot train on device ``name`` here (None: it can). Imports torch."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return f"{name!r} is not a device torch knows; use cpu, cuda, cuda:N or mps"
    if device.type == "cpu":
        return None
    if device.type == "meta":
        return "the meta device holds no data; use cpu or cuda"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            return f"{name!r} is not available: {why}; use --device cpu"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{name!r} is not available: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        return None
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else f"{name!r} is not available here; use --device cpu"
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        return None
    return f"{name!r} is not available here; use --device cpu"


def default_device(index: int | None = None) -> str:
    """The device every stage trains or measures on when ``--device`` is not given: ``cuda`` (``cuda:index``
    when an index is given) if torch sees a CUDA GPU, else ``cpu``. Imports torch."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if index is None else f"cuda:{index}"


def torch_device(text: str) -> str:
    """argparse type of ``--device``: a device torch knows and that is available here."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


torch_device.check = lambda value, name: _check_device(value, name)  # type: ignore[attr-defined]


def _check_device(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a device name such as cpu or cuda:0, not {value!r}")
    problem = device_problem(value)
    if problem:
        raise ValueError(f"{name}: {problem}" if name else problem)
    return value
