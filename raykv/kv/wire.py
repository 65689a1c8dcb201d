"""Low-level wire helpers shared by the kv codecs (commands, results, session blobs).

Every kv encoding is ``version byte, tag byte, fields``. Fields are:

* unsigned ints in ``[0, 2**64)`` as LEB128 varints (7 bits per byte, least
  significant group first, high bit = "more bytes follow"), at most 10 bytes;
* byte strings as a varint length followed by the raw bytes;
* flags as one byte, ``0`` or ``1``.

Decoding is strict and *canonical*: an over-long varint (a redundant trailing
zero group), a flag byte other than 0/1, a truncated field or trailing bytes are
all rejected. Hence a successfully decoded value re-encodes to exactly the input
bytes, which keeps every replica's view of an entry identical.

:class:`Reader` raises only ``ValueError`` (never ``IndexError`` or
``struct.error``), with a message naming what was being decoded and the field.
"""

from __future__ import annotations

from typing import NoReturn

U64_LIMIT = 1 << 64
"""Exclusive upper bound of every integer field."""

_MAX_VARINT_BYTES = 10


def assert_never(value: NoReturn) -> NoReturn:
    """Exhaustive-dispatch guard (``typing.assert_never`` exists only from Python 3.11)."""
    raise AssertionError(f"unhandled case: {type(value).__name__}")


class Writer:
    """Appends fields to a buffer that starts with ``version`` and ``tag``."""

    __slots__ = ("_buf",)

    def __init__(self, version: int, tag: int) -> None:
        self._buf = bytearray((version, tag))

    def byte(self, value: int) -> None:
        """One raw byte (``0 <= value < 256``), used for nested tags."""
        self._buf.append(value)

    def uint(self, value: int) -> None:
        """``value`` as a varint. The caller guarantees ``0 <= value < 2**64``."""
        buf = self._buf
        while value >= 0x80:
            buf.append((value & 0x7F) | 0x80)
            value >>= 7
        buf.append(value)

    def blob(self, value: bytes) -> None:
        self.uint(len(value))
        self._buf += value

    def flag(self, value: bool) -> None:
        self._buf.append(1 if value else 0)

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """Reads fields from ``data``; ``what`` names the encoding in error messages."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"{what} must be bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def header(self, version: int) -> int:
        """Check the version byte and return the tag byte."""
        if not self._data:
            raise ValueError(f"{self._what} is empty")
        found = self.byte("version")
        if found != version:
            raise ValueError(f"{self._what} has unknown format version {found} (expected {version})")
        return self.byte("tag")

    def fail(self, message: str) -> NoReturn:
        raise ValueError(f"{self._what}: {message} (at byte {self._pos})")

    def byte(self, field: str) -> int:
        if self._pos >= len(self._data):
            self.fail(f"truncated before field {field!r}")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def uint(self, field: str) -> int:
        """A canonical varint below ``2**64``."""
        pos = self._pos
        if pos < len(self._data) and self._data[pos] < 0x80:  # one byte: most lengths and counts
            self._pos = pos + 1
            return self._data[pos]
        value = 0
        for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
            byte = self.byte(field)
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and shift:
                    self.fail(f"over-long varint in field {field!r}")
                if value >= U64_LIMIT:
                    self.fail(f"varint in field {field!r} exceeds 64 bits")
                return value
        self.fail(f"varint in field {field!r} is longer than {_MAX_VARINT_BYTES} bytes")

    def blob(self, field: str) -> bytes:
        size = self.uint(field)
        end = self._pos + size
        if end > len(self._data):
            self.fail(f"field {field!r} needs {size} bytes, only {len(self._data) - self._pos} left")
        value = self._data[self._pos:end]
        self._pos = end
        return value

    def flag(self, field: str) -> bool:
        value = self.byte(field)
        if value > 1:
            self.fail(f"flag {field!r} is {value}, expected 0 or 1")
        return value == 1

    def text(self, field: str) -> str:
        raw = self.blob(field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"field {field!r} is not valid UTF-8 ({exc.reason})")

    def finish(self) -> None:
        """Reject trailing bytes after a complete value."""
        extra = len(self._data) - self._pos
        if extra:
            self.fail(f"{extra} trailing byte(s) after a complete value")
