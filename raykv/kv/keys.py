"""How user keys are encoded in the store, and shown to people (pure: no Ray, no pickling).

A ``str`` key is stored as :data:`STR_TAG` + its UTF-8 bytes, a bytes key as
:data:`BYTES_TAG` + its bytes (:mod:`raykv.userdata` encodes and decodes them), so all bytes
keys sort before all str keys. :func:`show_key` turns an encoded key (a range bound, a split
point) back into what the user wrote, for messages, ``raykv status`` and its JSON.
"""

from __future__ import annotations

STR_TAG = b"s"
"""Prefix of an encoded ``str`` key."""
BYTES_TAG = b"b"
"""Prefix of an encoded bytes-like key; sorts before :data:`STR_TAG`."""


def show_key(raw: bytes | None) -> str | None:
    """An encoded key as the user wrote it (``'a'``, ``b'a'``); ``''`` for the start of the key
    space, None for its unbounded end, ``<hex>`` for bytes that are no encoded key."""
    if raw is None:
        return None
    if raw == b"":
        return ""
    tag, body = raw[:1], raw[1:]
    if tag == STR_TAG:
        try:
            return repr(body.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    elif tag == BYTES_TAG:
        return repr(body)
    return f"<{raw.hex()}>"


def show_bound(raw: bytes | None) -> str:
    """A range bound as the user wrote it: ``-inf`` for the start of the key space, ``+inf`` for
    its unbounded end, else :func:`show_key`."""
    return "+inf" if raw is None else (show_key(raw) or "-inf")


def show_span(lo: bytes, hi: bytes | None) -> str:
    """The range ``[lo, hi)`` as the user wrote its bounds."""
    return f"[{show_bound(lo)}, {show_bound(hi)})"
