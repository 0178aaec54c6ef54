"""Read MXNet's NDArray-list ``.params`` files with numpy and ``struct`` only (no mxnet dependency).

Layout (all little-endian), as ``mx.nd.save`` writes it for dense float arrays:

1. ``uint64 0x112`` (list magic), ``uint64 0`` (reserved), ``uint64 N`` (array count);
2. N arrays, each: ``uint32 0xF993FAC9`` (NDArray V2 magic), ``int32 storage type`` (0 = dense),
   ``uint32 ndim``, ``int64 shape[ndim]``, ``int32 dev_type``, ``int32 dev_id``, ``int32 dtype``, then the
   raw data in C order;
3. ``uint64 K`` (name count, K = N), then K times ``uint64 length`` and that many UTF-8 bytes;
4. end of file.

Every field is validated; anything unexpected raises :class:`MxnetFormatError` with one line that says
what and at which byte offset. Nothing is read past a declared size before the size is checked against
what is left in the file, so a corrupt length cannot make the reader allocate gigabytes.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from drrn.errors import UserError

LIST_MAGIC = 0x112
NDARRAY_V2_MAGIC = 0xF993FAC9
DENSE = 0
# mshadow type flags; the DRRN weights are float32, the others are accepted for completeness.
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4")}
MAX_NDIM = 8
MAX_NAME_BYTES = 4096


class MxnetFormatError(UserError):
    """The file is not a well-formed MXNet NDArray list (or not the one expected)."""


class _Cursor:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, what: str) -> MxnetFormatError:
        return MxnetFormatError(f"{self.source}: {what} (at byte {self.pos} of {len(self.data)})")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def _read_array(cur: _Cursor, index: int) -> np.ndarray:
    start = cur.pos
    (magic,) = cur.unpack("<I", f"array {index} magic")
    if magic != NDARRAY_V2_MAGIC:
        cur.pos = start
        raise cur.fail(f"array {index}: magic {magic:#x} is not the NDArray V2 magic {NDARRAY_V2_MAGIC:#x}")
    storage, ndim = cur.unpack("<iI", f"array {index} storage type and ndim")
    if storage != DENSE:
        raise cur.fail(f"array {index}: storage type {storage} is not dense (0)")
    if not 1 <= ndim <= MAX_NDIM:
        raise cur.fail(f"array {index}: ndim {ndim} outside 1..{MAX_NDIM}")
    shape = cur.unpack(f"<{ndim}q", f"array {index} shape")
    if any(d < 0 for d in shape):
        raise cur.fail(f"array {index}: negative dimension in shape {shape}")
    _dev_type, _dev_id, code = cur.unpack("<iii", f"array {index} context and dtype")
    if code not in DTYPES:
        raise cur.fail(f"array {index}: unknown dtype code {code} (known: {sorted(DTYPES)})")
    dtype = DTYPES[code]
    count = math.prod(shape)  # Python ints: a corrupt shape must not wrap around to a small size
    raw = cur.take(count * dtype.itemsize, f"array {index} data {shape} {dtype.name}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_ndarray_list(path: Path | str) -> dict[str, np.ndarray]:
    """``{name: array}`` from an ``mx.nd.save`` file; names keep MXNet's ``arg:``/``aux:`` prefixes.

    Raises :class:`MxnetFormatError` on any deviation from the layout, including bytes after the end.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MxnetFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_ndarray_list(data, str(path))


def parse_ndarray_list(data: bytes, source: str = "<bytes>") -> dict[str, np.ndarray]:
    """:func:`read_ndarray_list` on bytes already in memory."""
    cur = _Cursor(data, source)
    magic, reserved = cur.unpack("<QQ", "header")
    if magic != LIST_MAGIC:
        cur.pos = 0
        raise cur.fail(f"magic {magic:#x} is not an MXNet NDArray list ({LIST_MAGIC:#x})")
    if reserved != 0:
        cur.pos = 8
        raise cur.fail(f"reserved header field is {reserved}, expected 0")
    (n_arrays,) = cur.unpack("<Q", "array count")
    # The smallest array record is 32 bytes: a count beyond that bound is corruption, not a big file.
    if n_arrays * 32 > len(data) - cur.pos:
        raise cur.fail(f"array count {n_arrays} cannot fit in the file")
    arrays = [_read_array(cur, i) for i in range(n_arrays)]
    (n_names,) = cur.unpack("<Q", "name count")
    if n_names != n_arrays:
        raise cur.fail(f"{n_names} names for {n_arrays} arrays")
    names = []
    for i in range(n_names):
        (length,) = cur.unpack("<Q", f"name {i} length")
        if length > MAX_NAME_BYTES:
            raise cur.fail(f"name {i} length {length} exceeds {MAX_NAME_BYTES}")
        try:
            names.append(cur.take(length, f"name {i}").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise cur.fail(f"name {i} is not UTF-8") from exc
    if cur.pos != len(data):
        raise cur.fail(f"{len(data) - cur.pos} unexpected bytes after the last name")
    if len(set(names)) != len(names):
        raise cur.fail(f"duplicate array names {sorted(n for n in set(names) if names.count(n) > 1)}")
    return dict(zip(names, arrays, strict=True))


def write_ndarray_list(arrays: dict[str, np.ndarray]) -> bytes:
    """The inverse of :func:`parse_ndarray_list` for float32 arrays (used to make test files)."""
    out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for a in arrays.values():
        a = np.ascontiguousarray(a, dtype="<f4")
        out.append(struct.pack(f"<IiI{a.ndim}qiii", NDARRAY_V2_MAGIC, DENSE, a.ndim, *a.shape, 1, 0, 0))
        out.append(a.tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        raw = name.encode("utf-8")
        out.append(struct.pack("<Q", len(raw)) + raw)
    return b"".join(out)
