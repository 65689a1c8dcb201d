"""Client sessions for exactly-once writes (Raft thesis §6.3) and their blob codec.

A session is created by a ``RegisterSession`` entry and identified by that
entry's log index. It remembers:

* ``acked_seq`` -- every request with ``seq <= acked_seq`` was answered to the
  client, which said so; such requests are *stale* and are never applied again;
* ``results`` -- the encoded result of every applied request with
  ``seq > acked_seq``, ascending by seq, so a retry returns the same answer
  without applying twice;
* ``last_active_ms`` -- the largest ``ts_ms`` seen (registration or request),
  used by expiry and by eviction from a full table.

Blob layout (:mod:`raykv.kv.wire`)::

    SESSION_VERSION 0x51 last_active_ms acked_seq count (seq_delta result)*

``seq_delta`` is the seq minus the previous one (the first is relative to
``acked_seq``); it is ``>= 1``, which the decoder checks, so the results are
strictly ascending and all above ``acked_seq``. Decoding raises ``ValueError``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .wire import U64_LIMIT, Reader, Writer

SESSION_VERSION = 1
_TAG_SESSION = 0x51


def _seq_of(item: tuple[int, bytes]) -> int:
    return item[0]


@dataclass(frozen=True, slots=True)
class Session:
    """One session's state. Invariant: ``results`` seqs strictly ascend, all ``> acked_seq``."""

    last_active_ms: int
    acked_seq: int = 0
    results: tuple[tuple[int, bytes], ...] = ()

    def pending(self) -> int:
        """How many results are cached (bounded by ``max_pending_per_session``)."""
        return len(self.results)

    def lookup(self, seq: int) -> bytes | None:
        """The cached encoded result of request ``seq``, or None."""
        i = bisect.bisect_left(self.results, seq, key=_seq_of)
        if i < len(self.results) and self.results[i][0] == seq:
            return self.results[i][1]
        return None

    def acknowledge(self, acked_seq: int, ts_ms: int) -> "Session":
        """Raise ``acked_seq``, drop results at or below it, and bump ``last_active_ms``."""
        acked = max(self.acked_seq, acked_seq)
        kept = self.results[bisect.bisect_right(self.results, acked, key=_seq_of):]
        return Session(max(self.last_active_ms, ts_ms), acked, kept)

    def with_result(self, seq: int, result: bytes) -> "Session":
        """Cache ``result`` under ``seq`` (which must be above ``acked_seq`` and not cached)."""
        assert seq > self.acked_seq and self.lookup(seq) is None, seq
        i = bisect.bisect_left(self.results, seq, key=_seq_of)
        results = self.results[:i] + ((seq, result),) + self.results[i:]
        return Session(self.last_active_ms, self.acked_seq, results)

    def describe(self) -> str:
        seqs = ",".join(str(s) for s, _ in self.results)
        return f"session active={self.last_active_ms} acked={self.acked_seq} pending=[{seqs}]"

    def encode(self) -> bytes:
        w = Writer(SESSION_VERSION, _TAG_SESSION)
        w.uint(self.last_active_ms)
        w.uint(self.acked_seq)
        w.uint(len(self.results))
        previous = self.acked_seq
        for seq, result in self.results:
            w.uint(seq - previous)
            w.blob(result)
            previous = seq
        return w.getvalue()

    @staticmethod
    def decode_last_active(data: bytes) -> int:
        """Just ``last_active_ms`` of a blob, without parsing its cached results.

        Expiry and eviction scan every session; this keeps the scan cheap.
        Checks only the header, so a corrupt tail goes unnoticed here.
        """
        r = Reader(data, "kv session")
        tag = r.header(SESSION_VERSION)
        if tag != _TAG_SESSION:
            r.fail(f"unknown session tag 0x{tag:02x}")
        return r.uint("last_active_ms")

    @classmethod
    def decode(cls, data: bytes) -> "Session":
        """Inverse of :meth:`encode`; ``ValueError`` on a malformed blob."""
        r = Reader(data, "kv session")
        tag = r.header(SESSION_VERSION)
        if tag != _TAG_SESSION:
            r.fail(f"unknown session tag 0x{tag:02x}")
        last_active, acked, count = r.uint("last_active_ms"), r.uint("acked_seq"), r.uint("count")
        results = []
        previous = acked
        for _ in range(count):
            delta = r.uint("seq_delta")
            if delta == 0:
                r.fail("session results are not strictly ascending")
            previous += delta
            if previous >= U64_LIMIT:
                r.fail("session result seq exceeds 64 bits")
            results.append((previous, r.blob("result")))
        r.finish()
        return cls(last_active, acked, tuple(results))
