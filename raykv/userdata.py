"""How user keys and values become the bytes the kv layer stores (no Ray here).

Keys
----
:func:`encode_key` accepts ``str`` and bytes-like keys (``bytes``, ``bytearray``,
``memoryview``) and prefixes a one-byte type tag:

* ``str`` -> ``b"s"`` + its UTF-8 encoding;
* bytes-like -> ``b"b"`` + the raw bytes (a ``bytearray`` or ``memoryview``
  key is the same key as the ``bytes`` with the same content, and reads back
  as ``bytes``).

So ``"a"`` and ``b"a"`` are distinct keys, as they are distinct in a Python
dict. In the stored (byte) order every bytes key sorts before every str key,
bytes keys sort by their bytes and str keys by code point (UTF-8 byte order
is code point order). The empty key of either type is allowed: the tag makes
the stored key non-empty. The stored key, tag included, is at most
``limits.max_key_bytes`` long, so a user key may have at most
``max_key_bytes - 1`` bytes (UTF-8 bytes for a str).

Errors: a key of another type (``None``, ``int``, ...) or a str that cannot be
encoded as UTF-8 (a lone surrogate) raises
:class:`~raykv.errors.InvalidRequestError` naming the problem; an over-long
key raises :class:`~raykv.errors.KeyTooLargeError` naming the user-visible size
and limit. :func:`decode_key` is the inverse and raises
:class:`~raykv.errors.InvalidRequestError` on stored bytes that are not an
encoded key.

Values
------
:func:`encode_value` serializes any picklable object other than ``None`` with
``cloudpickle.dumps(value, protocol=5)`` (all buffers in-band);
:func:`decode_value` unpickles. ``None`` is refused (``get()`` returns
``None``/its default for a missing key, so a stored ``None`` would be
indistinguishable from no key); an unpicklable value raises
:class:`~raykv.errors.InvalidRequestError` carrying the cause; a serialized
value longer than ``limits.max_value_bytes`` raises
:class:`~raykv.errors.ValueTooLargeError`.

Compare-and-set compares serialized forms
-----------------------------------------
``cas(key, expected, new)`` succeeds iff the stored bytes equal
``encode_value(expected)`` **byte for byte**. That holds for equal values of
the same type among ``str``, ``bytes``, ``int``, ``float``, ``bool``, and for
tuples/lists/dicts of those built in the same order (dict insertion order
matters). It does not hold across types that compare equal (``1``, ``1.0``
and ``True`` serialize differently; so do ``0.0`` and ``-0.0``), and it may
not hold for containers in which one object appears twice versus two equal
objects (pickle writes a back-reference for the repeated object), for sets
(their order depends on the process's string hash seed) or for arbitrary
objects. The safe pattern is to pass as ``expected`` the value ``get()``
returned: re-serializing a decoded value gives the same bytes for the types
above.

Decoding runs ``pickle.loads``: read only from stores whose writers you trust.
"""

from __future__ import annotations

import pickle

import cloudpickle

from .errors import InvalidRequestError, KeyTooLargeError, ValueTooLargeError
from .kv.keys import BYTES_TAG, STR_TAG
from .kv.limits import KVLimits

PICKLE_PROTOCOL = 5

_DEFAULT_LIMITS = KVLimits()
UserKey = str | bytes | bytearray | memoryview


def encode_key(key: UserKey, limits: KVLimits = _DEFAULT_LIMITS) -> bytes:
    """The stored form of ``key`` (see the module docstring for order and errors)."""
    if isinstance(key, str):
        raw = STR_TAG + _utf8(key)
        unit = "UTF-8 bytes"
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = BYTES_TAG + bytes(key)
        unit = "bytes"
    else:
        raise InvalidRequestError(
            f"key must be str or bytes (bytearray/memoryview), got {type(key).__name__}"
        )
    if len(raw) > limits.max_key_bytes:
        raise KeyTooLargeError(
            f"key of {len(raw) - 1} {unit} exceeds the limit of {limits.max_key_bytes - 1} "
            f"(max_key_bytes={limits.max_key_bytes} includes a 1-byte type tag)"
        )
    return raw


def _utf8(key: str) -> bytes:
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"str key is not encodable as UTF-8: {exc}") from exc


def decode_key(raw: bytes) -> str | bytes:
    """Inverse of :func:`encode_key`; :class:`InvalidRequestError` if ``raw`` is not an encoded key."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise InvalidRequestError(f"an encoded key is bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    tag, body = raw[:1], raw[1:]
    if tag == BYTES_TAG:
        return body
    if tag == STR_TAG:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"encoded str key is not valid UTF-8: {exc}") from exc
    raise InvalidRequestError(f"not an encoded key: unknown type tag {tag!r}")


_PLAIN_TYPES = frozenset((bytes, str, int, float, bool))
"""Exact types whose pickle does not depend on cloudpickle (its output for them is pickle's);
plain ``pickle`` encodes them about 7x faster (bulk loads encode every value)."""


def encode_value(value: object, limits: KVLimits = _DEFAULT_LIMITS) -> bytes:
    """The stored form of ``value``: its protocol-5 cloudpickle (see the module docstring)."""
    if value is None:
        raise InvalidRequestError(
            "storing None is not allowed: get() returns None/default for a missing key"
        )
    try:
        if type(value) in _PLAIN_TYPES:  # the same bytes as cloudpickle, without its set-up cost
            raw = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
        else:
            raw = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # pickling raises many types: PicklingError, TypeError, ...
        raise InvalidRequestError(
            f"value of type {type(value).__name__} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc
    if len(raw) > limits.max_value_bytes:
        raise ValueTooLargeError(
            f"value of type {type(value).__name__} serializes to {len(raw)} bytes, "
            f"exceeding max_value_bytes={limits.max_value_bytes}"
        )
    return raw


def decode_value(raw: bytes) -> object:
    """Inverse of :func:`encode_value` (unpickles: trust the writers of the store)."""
    return pickle.loads(raw)
