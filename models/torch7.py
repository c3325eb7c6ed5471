"""Reader for Torch7's binary serialisation format (``torch.save`` files, ``.t7``).

No Torch needed: the file is decoded into plain Python and NumPy values.

- nil, numbers, strings and booleans become ``None``, ``float``, ``str`` and ``bool``;
- Lua tables become ``dict`` (keys as stored: a Lua array ``{a, b}`` is ``{1.0: a, 2.0: b}``);
- ``torch.*Tensor`` objects become ``numpy.ndarray`` (sizes, strides and the 1-based storage
  offset applied to a view of the storage);
- ``torch.*Storage`` objects become 1-D ``numpy.ndarray``;
- every other torch class (``nn.*`` modules and the like) becomes a :class:`TorchObject`, a
  ``dict`` of its fields with the class name in ``.torch_typename``;
- Lua functions become :class:`LuaFunction` (their bytecode is kept, not run).

Objects that the file stores once and refers to again by index (shared tensors, cycles) come back
as the same Python object.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

# Type tags written before each value (torch7/File.lua).
_NIL, _NUMBER, _STRING, _TABLE, _TORCH, _BOOLEAN, _FUNCTION = 0, 1, 2, 3, 4, 5, 6
_LEGACY_RECUR_FUNCTION, _RECUR_FUNCTION = 7, 8

# Element type of each storage class, as written by a little-endian 64-bit build.
_STORAGE_DTYPES = {
    "Double": np.dtype("<f8"), "Float": np.dtype("<f4"), "Half": np.dtype("<f2"),
    "Long": np.dtype("<i8"), "Int": np.dtype("<i4"), "Short": np.dtype("<i2"),
    "Char": np.dtype("i1"), "Byte": np.dtype("u1"),
}


class Torch7FormatError(ValueError):
    """The file is not a (complete) Torch7 binary file; ``.path`` names it."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class TorchObject(dict):
    """A torch class instance other than a tensor or storage: its fields, and its class name."""

    def __init__(self, typename: str, fields: dict):
        super().__init__(fields)
        self.torch_typename = typename

    def __repr__(self) -> str:
        return f"TorchObject({self.torch_typename!r}, {sorted(map(str, self))})"


class LuaFunction:
    """A serialised Lua function: its dumped bytecode and upvalues (never executed)."""

    def __init__(self, bytecode: bytes, upvalues: Any):
        self.bytecode = bytecode
        self.upvalues = upvalues


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data = memoryview(data)
        self.pos = 0
        self.path = path
        self.objects: dict[int, Any] = {}

    def fail(self, message: str) -> Torch7FormatError:
        return Torch7FormatError(self.path, f"{message} [at byte {self.pos}]")

    def take(self, n: int) -> memoryview:
        if n < 0:
            raise self.fail(f"negative length {n}")
        end = self.pos + n
        if end > len(self.data):
            raise self.fail(f"file ends early: needed {n} more bytes, {len(self.data) - self.pos} left "
                            "(truncated file?)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def int(self) -> int:
        return self.unpack("<i")[0]

    def long(self) -> int:
        return self.unpack("<q")[0]

    def longs(self, n: int) -> tuple[int, ...]:
        return self.unpack(f"<{n}q") if n else ()

    def string(self) -> str:
        raw = bytes(self.take(self.int()))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def object(self) -> Any:
        tag = self.int()
        if tag == _NIL:
            return None
        if tag == _NUMBER:
            return self.unpack("<d")[0]
        if tag == _STRING:
            return self.string()
        if tag == _BOOLEAN:
            return self.int() == 1
        if tag == _TABLE:
            return self.table()
        if tag == _TORCH:
            return self.torch()
        if tag in (_FUNCTION, _RECUR_FUNCTION, _LEGACY_RECUR_FUNCTION):
            return self.function()
        raise self.fail(f"unknown type tag {tag}: not a Torch7 binary file, or a damaged one")

    def table(self) -> dict:
        index = self.int()
        if index in self.objects:
            return self.objects[index]
        table: dict = {}
        self.objects[index] = table
        for _ in range(self.count(self.int(), "table size")):
            key = self.object()
            table[_hashable(key)] = self.object()
        return table

    def function(self) -> LuaFunction:
        index = self.int()
        if index in self.objects:
            return self.objects[index]
        function = LuaFunction(bytes(self.take(self.int())), None)
        self.objects[index] = function
        function.upvalues = self.object()
        return function

    def torch(self) -> Any:
        index = self.int()
        if index in self.objects:
            return self.objects[index]
        version = self.string()
        if version.startswith("V "):
            typename = self.string()
        else:  # files from before versioning: the first string is the class name
            typename = version
        if not typename or len(typename) > 200 or not typename.isprintable():
            raise self.fail(f"implausible torch class name {typename[:60]!r}")
        kind = typename.rsplit(".", 1)[-1]
        if typename.startswith("torch.") and kind.endswith("Storage"):
            obj = self.storage(kind[: -len("Storage")], typename)
            self.objects[index] = obj
            return obj
        if typename.startswith("torch.") and kind.endswith("Tensor"):
            return self.tensor(index, typename)
        obj = TorchObject(typename, {})
        self.objects[index] = obj
        fields = self.object()
        if not isinstance(fields, dict):
            raise self.fail(f"{typename} object holds a {type(fields).__name__}, expected a table")
        obj.update(fields)
        return obj

    def count(self, n: int, what: str) -> int:
        """A size read from the file; each counted item needs at least one byte."""
        if n < 0:
            raise self.fail(f"negative {what} {n}")
        left = len(self.data) - self.pos
        if n > left:
            raise self.fail(f"{what} {n} exceeds the {left} bytes left (truncated file?)")
        return n

    def storage(self, element: str, typename: str) -> np.ndarray:
        if element not in _STORAGE_DTYPES:
            raise self.fail(f"unsupported storage type {typename}")
        dtype = _STORAGE_DTYPES[element]
        size = self.long()
        if size < 0:
            raise self.fail(f"negative storage size {size}")
        return np.frombuffer(self.take(size * dtype.itemsize), dtype=dtype).copy()

    def tensor(self, index: int, typename: str) -> np.ndarray:
        ndim = self.count(self.int(), "tensor rank")
        sizes = self.longs(ndim)
        strides = self.longs(ndim)
        offset = self.long() - 1  # Torch counts storage elements from 1
        storage = self.object()
        if storage is not None and not isinstance(storage, np.ndarray):
            raise self.fail(f"{typename} refers to a {type(storage).__name__}, expected a storage")
        if ndim == 0 or storage is None:  # an empty tensor
            array = np.zeros((0,), dtype=np.float32 if storage is None else storage.dtype)
        else:
            if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or offset < 0:
                raise self.fail(f"{typename} has negative sizes/strides/offset")
            last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) if all(sizes) else offset - 1
            if last >= storage.size:
                raise self.fail(f"{typename} of size {sizes} reaches past its storage of {storage.size}")
            item = storage.dtype.itemsize
            array = np.lib.stride_tricks.as_strided(
                storage[offset:], shape=sizes, strides=[s * item for s in strides], writeable=False).copy()
        self.objects[index] = array
        return array


def _hashable(key: Any) -> Any:
    """Lua tables may be keyed by tables; key those by identity."""
    try:
        hash(key)
    except TypeError:
        return id(key)
    return key


def load_t7(path: str | Path) -> Any:
    """Read a Torch7 binary file written by ``torch.save`` into Python/NumPy values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Torch7 file")
    reader = _Reader(path.read_bytes(), path)
    if len(reader.data) < 4:
        raise Torch7FormatError(path, f"only {len(reader.data)} bytes; not a Torch7 binary file")
    result = reader.object()
    if reader.pos != len(reader.data):
        raise Torch7FormatError(path, f"{len(reader.data) - reader.pos} unexpected bytes after the stored "
                                      "object (not a single Torch7 object?)")
    return result


def lua_list(table: dict) -> list:
    """The array part of a Lua table ``{1: a, 2: b, ...}`` as a Python list."""
    items = []
    while float(len(items) + 1) in table:
        items.append(table[float(len(items) + 1)])
    return items
