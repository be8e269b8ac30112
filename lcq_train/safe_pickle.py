"""Unpickling of files that hold numpy integer arrays (no torch), running no code the file names.

Loading a pickle calls whatever globals it names; even numpy's own names, which a pickle of an array needs,
trust their arguments: ``_codecs.encode`` with ``"hex"`` doubles its input (a few hundred bytes of nested
calls make terabytes), ``_reconstruct`` and ``numpy.ndarray`` allocate any shape uninitialised, and numpy's
``__setstate__`` trusts its flags and object lists (they can mark uint8 as holding objects, or leave an
object array's pointers unset, and crash the process). :class:`NumpyUnpickler` resolves only the globals
its subclass lists, binds numpy's to stand-ins that build integer dtypes and arrays only as numpy writes
them, and checks each BUILD first. Python hashes a tuple by hashing its items, with no depth limit, so a
key of 10^6 nested tuples (1 MB of opcodes) overflows the C stack where it is stored: a dict's keys and a set's
members must be strings, bytes or numbers. A length the file declares is read a chunk at a time, and refused
where the file ends first, before memory of that length is taken (protocol 5's bytearray was zeroed whole:
14 bytes made 16 GB). Any refusal is a :class:`pickle.UnpicklingError` saying what the file holds.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np

# The globals a pickle of numpy integer arrays needs (the arrays, their dtypes, protocol 2's bytes), under
# numpy 1's and numpy 2's module names.
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


def _latin1_encode(text, encoding):
    """``_codecs.encode`` as a protocol 2 pickle of bytes calls it: ``(text, "latin1")``. Any other codec is
    refused: ``"hex"`` doubles its input, so a few hundred bytes of nested calls would make terabytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"it calls _codecs.encode with {encoding!r} on {type(text).__name__}, "
                                     "where a pickle of bytes uses 'latin1' on str")
    return text.encode("latin1")


# the types of a dict's keys and a set's members (a tuple's hash recurses into its items, without a depth limit)
_KEY_TYPES = (str, bytes, int, float, bool)

_NDARRAY = object()   # what the name numpy.ndarray resolves to: an argument of _reconstruct, never a callable


def _plain_dtype(code, align=False, copy=True):
    """``numpy.dtype`` as a pickle of an integer or bool dtype calls it, always a copy (the pickle's BUILD sets
    its byte order); object, structured and other dtypes are refused."""
    dtype = np.dtype(code.decode("ascii") if isinstance(code, bytes) else code, False, True)
    if dtype.kind not in "biu" or dtype.fields or dtype.subdtype:
        raise pickle.UnpicklingError(f"it holds dtype {dtype}, where only integer arrays are read")
    return dtype


def _empty_array(subtype, shape, code):
    """numpy's ``_reconstruct`` as ``ndarray.__reduce__`` calls it: ``(ndarray, (0,), b"b")``, an empty array
    that the pickle's BUILD fills; another shape would allocate that many bytes, uninitialised."""
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"it calls numpy's _reconstruct with shape {shape!r}, not (0,)")
    return np.empty(0, np.uint8)


_STAND_INS = {"encode": _latin1_encode, "dtype": _plain_dtype, "_reconstruct": _empty_array, "ndarray": _NDARRAY}


def numpy_build_problem(inst, state) -> str | None:
    """Why BUILD must not set ``state`` on ``inst``; None when it is what numpy writes for an integer dtype
    (``(3, ENDIAN, None, None, None, -1, -1, 0)``) or array (``(1, SHAPE, DTYPE, FORTRAN, BYTES)``)."""
    if isinstance(inst, np.dtype):
        ok = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[2:] == (None,) * 3 + (-1, -1, 0)
              and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"="))
    elif isinstance(inst, np.ndarray):
        ok = (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[2], np.dtype)
              and state[2].kind in "biu" and not state[2].hasobject and isinstance(state[4], bytes))
    else:
        return f"it sets the state of a {type(inst).__name__}"
    kind = "dtype" if isinstance(inst, np.dtype) else "array"
    return None if ok else f"it sets a numpy {kind} state numpy never writes ({state!r:.80})"


_CHUNK = 1 << 20     # bytes read at once: a read of a declared length takes no more memory than the file holds


class _ChunkedReader:
    """The file an unpickler reads, whose ``read(n)`` reads ``n`` bytes a chunk at a time (a buffered file's
    ``read(n)`` allocates ``n`` bytes first, whatever the file holds)."""

    def __init__(self, file):
        self.file, self.readline = file, file.readline

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return self.file.read()
        parts, left = [], n
        while left > 0:
            part = self.file.read(min(_CHUNK, left))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)


class NumpyUnpickler(pickle._Unpickler):
    """Python's pickle.Unpickler (the pure-Python one, whose BUILD can be checked) that resolves only the
    globals of :attr:`GLOBALS` (:data:`NUMPY_GLOBALS` among them), numpy's as the stand-ins above, and checks
    each BUILD with :meth:`build_problem`. Subclasses set :attr:`GLOBALS` and :attr:`HOLDS` (what the file
    is, for the refusal) and may bind more stand-ins (:attr:`STAND_INS`) or allow more BUILDs."""

    GLOBALS: frozenset = NUMPY_GLOBALS
    STAND_INS: dict = {}
    HOLDS = "this file"
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, **kwargs):
        super().__init__(_ChunkedReader(file), **kwargs)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which {self.HOLDS} never holds; "
                                         "a pickle that does could run any code, so it is not loaded")
        if (module, name) in self.STAND_INS:
            return self.STAND_INS[module, name]
        if (module, name) in NUMPY_GLOBALS:
            return _STAND_INS[name]
        return super().find_class(module, name)

    def build_problem(self, inst, state) -> str | None:
        """Why BUILD must not set ``state`` on ``inst`` (None: it may)."""
        return numpy_build_problem(inst, state)

    def load(self):
        """The object the file holds; a byte no opcode has is refused as such (the opcode table's KeyError)."""
        try:
            return super().load()
        except KeyError as e:
            if not (isinstance(e.args[0], int) and e.args[0] not in self.dispatch):
                raise
            raise pickle.UnpicklingError(f"it holds byte {e.args[0]:#04x} where an opcode belongs (a damaged file, "
                                         "or not a pickle)") from None

    def load_frame(self):
        """A frame's bytes, refused where the file ends first (read whole, they would be taken as opcodes)."""
        (size,) = struct.unpack("<Q", self.read(8))
        self._unframer.load_frame(0)            # (checks that the frame before it was read to its end)
        data = self._unframer.file_read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(f"it declares a frame of {size} bytes where the file ends after "
                                         f"{len(data)} (a truncated or crafted file)")
        self._unframer.current_frame = io.BytesIO(data)

    def load_build(self):
        problem = self.build_problem(self.stack[-2], self.stack[-1])
        if problem:
            raise pickle.UnpicklingError(problem)
        super().load_build()

    def _read_declared(self) -> bytes:
        """The bytes of an item whose 8-byte length comes first; refused where the file (or frame) ends first."""
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(f"it declares {size} bytes where the file ends after {len(data)} (a "
                                         "truncated or crafted file)")
        return data

    def load_binbytes8(self):
        self.append(self._read_declared())

    def load_binunicode8(self):
        self.append(str(self._read_declared(), "utf-8", "surrogatepass"))

    def load_bytearray8(self):
        self.append(bytearray(self._read_declared()))

    def _check_keys(self, keys) -> None:
        """Refuse a dict key or set member other than a string, bytes or a number before it is hashed."""
        for key in keys:
            if type(key) not in _KEY_TYPES:
                raise pickle.UnpicklingError(f"it keys a dict or set by a {type(key).__name__}, which {self.HOLDS} "
                                             "never does (its keys are strings and numbers)")

    def load_setitem(self):
        self._check_keys(self.stack[-2:-1])
        super().load_setitem()

    def load_setitems(self):            # (the items since the MARK: the stack, until pop_mark)
        self._check_keys(self.stack[::2])
        super().load_setitems()

    def load_dict(self):
        self._check_keys(self.stack[::2])
        super().load_dict()

    def load_additems(self):
        self._check_keys(self.stack)
        super().load_additems()

    def load_frozenset(self):
        self._check_keys(self.stack)
        super().load_frozenset()

    dispatch[pickle.FRAME[0]] = load_frame
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8
    dispatch[pickle.BINUNICODE8[0]] = load_binunicode8
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
