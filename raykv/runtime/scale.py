"""Online resharding: ``raykv scale --shards N``, driven step by step from the router.

One operation at a time per store. Its record (:class:`ScaleOp`, JSON under
:data:`~raykv.runtime.catalog.SCALE_OP_KEY` in the meta group) says what is being
done down to the phase, and every phase is idempotent, so whoever runs
:meth:`Resharder.run_once` next (the router's placement-driver thread, restarted
with the router) finishes it: the record is written before a phase's effects
are relied on and after they are complete.

A step moves one key range (:class:`~raykv.placement.Move`); see
:mod:`raykv.kv.ranges` for what each range change means to a group::

  split: create  -> the new group (replicas placed on the hosts), SET its empty range
         precopy -> target INGEST_BEGIN, INGEST_ROWS (pages of the source's rows, while the
                    source still serves the range)
         fence   -> source FENCE [lo, hi): refuses those keys from now on
         copy    -> the delta: source and target pages compared, INGEST_ROWS of rows that
                    differ, INGEST_DELETE of rows the source no longer has; INGEST_DONE
         switch  -> shard map CAS (epoch + 1): clients now route [lo, hi) to the target
         drop    -> source DROP [lo, hi): rows deleted, range gone for good
  merge: precopy, fence, copy, switch, drop as above (the left neighbour is the target), then
         retire  -> after ``retire_grace_s`` (clients' retries of requests sent to the
                    old group end), its replicas shut down, removed, data deleted.

Linearizability: from FENCE on, nothing changes the range's rows on the source,
and before INGEST_DONE nothing can read or write them on the target; the delta
makes the target's rows equal to the source's frozen ones, so the target starts
from exactly the rows acknowledged before the fence; a client whose
request was refused (``WRONG_SHARD``, cached per request seq, so a retry cannot
apply later) re-reads the map and retries at the new owner. The only window
where the range is unavailable is fence..switch: the delta, small when few writes
hit the range during the pre-copy.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from ..errors import DriverSupersededError, InvalidRequestError, PlacementError, ShardMapError
from ..kv.commands import ErrorCode, Failed, Ok, RangeChange
from ..kv.ranges import RangeAction
from ..placement import META_SHARD, Move, ShardMap, after_move, is_done, next_move, plan_replicas
from .scaleop import DEFAULT_RETIRE_GRACE_S, ScaleOp, dst_rids, src_rids
from .catalog import SCALE_OP_KEY, cluster_hosts, read_shard_map, update_shard_map
from . import groups
from .groups import leader_call
from ..replica.options import ReplicaOptions
from .shard import start_group

log = logging.getLogger("raykv.scale")
COPY_PAGE_ROWS = 20_000
"""Rows per copy page (a page also stops at 8 MiB: the replica's scan page bound)."""
PHASE_CALL_TIMEOUT_S = 30.0
"""How long one call of a phase looks for a leader that answers; past it the phase fails this
turn and is retried after the driver's pause. The driver's thread also runs repair: a group
left without a leader must not hold it (repair may be what brings that leader back)."""


class ScaleRecordRaced(PlacementError):
    """The scale record changed between this driver's read and its compare-and-set (another
    router's driver wrote it: a race, not a refusal -- read the record again and go on)."""


class Resharder:
    """Starts and advances the store's resharding operation; used by one thread of the router.

    ``meta``: a ShardClient of the meta group. ``on_map``: called with each new
    encoded shard map this resharder writes (the router's cache).
    """

    def __init__(self, store: str, meta, data_dirs: str | Mapping[str, str], options: ReplicaOptions | None,
                 on_map: Callable[[bytes], None], epoch: int = 0) -> None:
        """``epoch``: the lease epoch of the driver this resharder works for (see
        :func:`~raykv.runtime.catalog.claim_lease`); every range change carries it."""
        self.store, self.meta, self.data_dirs = store, meta, data_dirs
        self.options = options or ReplicaOptions()
        self.on_map = on_map
        self.epoch = epoch
        self._attempts = itertools.count(1)

    # -- the record ------------------------------------------------------------------
    def load(self) -> tuple[ScaleOp | None, bytes | None]:
        raw = self.meta.get(SCALE_OP_KEY)
        return (None if raw is None else ScaleOp.decode(raw)), raw

    def _save(self, op: ScaleOp, previous: bytes | None) -> bytes:
        if previous is not None and ScaleOp.decode(previous).driver > self.epoch:
            raise DriverSupersededError(f"store {self.store!r}: the scale record was written by a newer placement "
                                        f"driver (epoch {ScaleOp.decode(previous).driver} > {self.epoch})")
        op.updated_ms, op.driver = int(time.time() * 1000), self.epoch
        raw = op.encode()
        if not self.meta.cas(SCALE_OP_KEY, previous, raw):
            raise ScaleRecordRaced(f"store {self.store!r}: the scale record changed under its driver")
        return raw

    def _attempt(self) -> int:
        """A fresh ingest attempt: above every earlier one of this driver, and of every older one."""
        return (self.epoch << 32) | next(self._attempts)

    def check_target(self, target: int, op: ScaleOp | None = None) -> None:
        """Raise InvalidRequestError if an operation towards another target runs (reads only;
        ``op``: the record already read, else it is loaded)."""
        if op is None:
            op, _ = self.load()
        if op is not None and op.state == "running" and op.target != target:
            raise InvalidRequestError(f"store {self.store!r} is already scaling: {op.describe()}")

    def start(self, target: int, retire_grace_s: float = DEFAULT_RETIRE_GRACE_S) -> ScaleOp:
        """Record a new operation towards ``target`` shards (the same running one if it has that
        target). The record is written with this driver's epoch: the caller holds the lease."""
        op, raw = self.load()
        self.check_target(target, op)
        if op is not None and op.state == "running":
            return op
        smap = self.shard_map()
        next_shard = max([s.shard for s in smap.shards] + [op.next_shard - 1 if op else 0]) + 1
        fresh = ScaleOp(id=(op.id + 1) if op else 1, target=target, next_shard=next_shard,
                        steps_total=abs(target - len(smap.shards)), retire_grace_s=float(retire_grace_s))
        self._save(fresh, raw)
        log.info("store %s: %s", self.store, fresh.describe())
        return fresh

    def shard_map(self) -> ShardMap:
        return read_shard_map(self.meta)

    def moving_shards(self) -> tuple[int, ...]:
        """The source and target of the step in flight (empty when no operation runs)."""
        op, _ = self.load()
        if op is None or op.state != "running" or op.step is None:
            return ()
        return (op.step["src"], op.step["dst"])

    # -- driving -----------------------------------------------------------------------
    def run_once(self) -> bool:
        """Advance the running operation by one phase (or clean up after a failed one); False
        when there is nothing to do. A phase whose record write lost a race to another driver is
        left for the next call, which reads the record again (the caller first checks that this
        driver still holds the lease)."""
        try:
            return self._advance()
        except ScaleRecordRaced as exc:
            log.info("%s: going on from the record as it is now", exc)
            return True

    def _advance(self) -> bool:
        op, raw = self.load()
        if op is not None and op.state == "failed" and op.step is not None and op.step.get("cleanup"):
            self._clean_up(op, raw)
            return True
        if op is None or op.state != "running":
            return False
        try:
            if op.step is None:
                self._plan_step(op, raw)
            else:
                self._run_phase(op, raw)
        except (DriverSupersededError, ScaleRecordRaced):
            raise
        except (InvalidRequestError, ShardMapError, PlacementError) as exc:
            self._refused(exc)
        return True

    def _refused(self, exc: Exception) -> None:
        """A step was refused (not a transient failure). Whether a range is fenced is asked of the
        source group itself (after claiming it with this driver's epoch, so no older driver can
        fence it later), never read from the record: while it is not, nothing is lost by giving
        up -- the operation fails and its cleanup (the split's new group retired, the merge's
        target's ingest aborted) runs next. From the fence on, a range is unavailable until the
        step is done, so the error is recorded (``raykv status`` shows it) and the phase retried."""
        op, raw = self.load()
        if op.step is None or not self._fenced(op):
            op.state, op.error = "failed", str(exc)
            if op.step is not None:
                op.step["cleanup"] = True
            self._save(op, raw)
            log.error("store %s: %s", self.store, op.describe())
            return
        op.error = f"{exc} (retrying: a range is fenced until this step is done)"
        self._save(op, raw)
        raise exc

    def _fenced(self, op: ScaleOp) -> bool:
        """Whether the step's range is fenced on its source, as the source group says."""
        move = op.move()
        state = self._group_call(move.src, src_rids(op), "range_state", ())
        if state is not None:  # claim the source: from now on no older driver changes it
            self._change(move.src, src_rids(op), RangeAction.SET, state.start, state.end)
            state = self._group_call(move.src, src_rids(op), "range_state", ())
        return state is not None and state.fence is not None and state.fence[0] <= move.lo

    def _clean_up(self, op: ScaleOp, raw: bytes) -> None:
        """After a step failed before its fence: retire a split's new group (it never served), or
        abort the merge target's ingest (its pre-copied rows go); then the record says so."""
        move = op.move()
        if move.kind == "split":
            retire_group(self.store, move.dst, dst_rids(op), self.data_dirs)
        else:
            self._change(move.dst, dst_rids(op), RangeAction.INGEST_ABORT, move.lo, move.hi, gen=self._attempt())
        op.step["cleanup"] = False
        self._save(op, raw)
        log.info("store %s: cleaned up after the failed step (%s)", self.store, move.describe())

    def _plan_step(self, op: ScaleOp, raw: bytes) -> None:
        smap = self.shard_map()
        if op.steps_done == 0:  # later steps' shards all have a range state (adopted, or SET at create)
            self._adopt_ranges(smap)
        stats = {s.shard: self._call(s, "range_stats", (s.start, s.end)) for s in smap.shards}
        sizes = {sid: st["bytes"] for sid, st in stats.items()}
        move = next_move(smap, op.target, sizes, op.next_shard, {sid: st["median"] for sid, st in stats.items()})
        if move is None:
            op.state = "done"
            self._save(op, raw)
            log.info("store %s: %s", self.store, op.describe())
            return
        src = smap.by_id(move.src)
        step = {"kind": move.kind, "src": move.src, "dst": move.dst, "lo": move.lo.hex(),
                "hi": None if move.hi is None else move.hi.hex(), "replicas": None, "retire_after_ms": 0,
                "src_rids": list(_rids(src.replicas)), "phase": "create" if move.kind == "split" else "precopy"}
        if move.kind == "split":
            op.next_shard += 1
            step["replicas"] = [list(r) for r in plan_replicas(move.dst - 1, len(src.replicas), cluster_hosts())]
            step["dst_rids"] = [rid for rid, _ in step["replicas"]]
        else:
            step["dst_rids"] = list(_rids(smap.by_id(move.dst).replicas))
        op.step = step
        self._save(op, raw)
        log.info("store %s: step %d/%d: %s", self.store, op.steps_done + 1, op.steps_total, move.describe())

    def _adopt_ranges(self, smap: ShardMap) -> None:
        """Give every shard its range state (a no-op for shards that have one): a store created
        before resharding existed serves every key until then."""
        for spec in smap.shards:
            self._change(spec.shard, _rids(spec.replicas), RangeAction.SET, spec.start, spec.end)

    def _run_phase(self, op: ScaleOp, raw: bytes) -> None:
        self._take_in_repairs(op)
        move, phase = op.move(), op.step["phase"]
        handler = getattr(self, f"_phase_{phase}")
        following = handler(op, move)
        op.step["phase"], op.error = following, None
        if following == "done":
            op.step, op.steps_done = None, op.steps_done + 1
        self._save(op, raw)

    def _take_in_repairs(self, op: ScaleOp) -> None:
        """Repair runs while a failing step backs off, and may have replaced replicas of the step's
        groups since it was planned: the step's replica ids take in the map's (saved with the
        phase), so its calls still find each group's leader and a retired source loses every
        replica, the ones repair added included. Ids of removed replicas stay: they are skipped."""
        in_map = {spec.shard: spec for spec in self.shard_map().shards}
        for side in ("src", "dst"):
            spec = in_map.get(op.step[side])
            if spec is not None:
                op.step[f"{side}_rids"] = sorted(set(op.step[f"{side}_rids"]) | set(_rids(spec.replicas)))

    def _phase_create(self, op: ScaleOp, move: Move) -> str:
        placement = tuple((rid, host) for rid, host in op.step["replicas"])
        # no wait for every replica: the SET below needs a leader, i.e. a majority (a replica on a host
        # lost meanwhile is replaced by repair once the step is done)
        start_group(self.store, move.dst, placement, self.data_dirs, self.options, wait=False, create=True)
        self._change(move.dst, _rids(placement), RangeAction.SET, move.lo, move.lo)
        return "precopy"

    def _phase_precopy(self, op: ScaleOp, move: Move) -> str:
        """Copy every row of the range while the source still serves it (writes go on there)."""
        started, target, gen = time.monotonic(), dst_rids(op), self._attempt()
        self._change(move.dst, target, RangeAction.INGEST_BEGIN, move.lo, move.hi, gen=gen)
        for page in self._pages(move.src, src_rids(op), move.lo, move.hi):
            self._change(move.dst, target, RangeAction.INGEST_ROWS, move.lo, move.hi, page, gen)
            op.moved_keys += len(page)
            op.moved_bytes += _size(page)
        op.copy_s += time.monotonic() - started
        return "fence"

    def _phase_fence(self, op: ScaleOp, move: Move) -> str:
        self._change(move.src, src_rids(op), RangeAction.FENCE, move.lo, move.hi)
        op.step["fenced_at_ms"] = int(time.time() * 1000)
        return "copy"

    def _phase_copy(self, op: ScaleOp, move: Move) -> str:
        """Under the fence: make the target's copy equal to the source's now frozen rows by sending
        only what differs (rows written since the pre-copy, and deletes), then take the range."""
        started, target, cursor, gen = time.monotonic(), dst_rids(op), move.lo, self._attempt()
        self._change(move.dst, target, RangeAction.INGEST_BEGIN, move.lo, move.hi, gen=gen)  # this attempt takes over
        while True:
            pairs, more = self._group_call(move.src, src_rids(op), "range_rows", (cursor, move.hi, COPY_PAGE_ROWS))
            span_end = pairs[-1][0] + b"\x00" if (more and pairs) else move.hi
            copied = {k: v for page in self._pages(move.dst, target, cursor, span_end) for k, v in page}
            puts = tuple((bytes(k), bytes(v)) for k, v in pairs if copied.pop(bytes(k), None) != bytes(v))
            gone = tuple((k, b"") for k in sorted(copied))
            for action, rows in ((RangeAction.INGEST_ROWS, puts), (RangeAction.INGEST_DELETE, gone)):
                if rows:
                    self._change(move.dst, target, action, move.lo, move.hi, rows, gen)
            op.delta_keys += len(puts) + len(gone)
            op.moved_keys += len(puts)
            op.moved_bytes += _size(puts)
            if not (more and pairs):
                break
            cursor = span_end
        self._change(move.dst, target, RangeAction.INGEST_DONE, move.lo, move.hi, gen=gen)
        op.copy_s += time.monotonic() - started
        return "switch"

    def _pages(self, shard: int, rids: tuple[int, ...], lo: bytes, hi: bytes | None):
        """The rows of ``[lo, hi)`` on ``shard``'s leader, page by page (linearizable reads)."""
        cursor = lo
        while True:
            pairs, more = self._group_call(shard, rids, "range_rows", (cursor, hi, COPY_PAGE_ROWS))
            if pairs:
                yield tuple((bytes(k), bytes(v)) for k, v in pairs)
            if not (more and pairs):
                return
            cursor = pairs[-1][0] + b"\x00"

    def _phase_switch(self, op: ScaleOp, move: Move) -> str:
        replicas = tuple((rid, host) for rid, host in op.step["replicas"] or ())
        _, raw = update_shard_map(self.meta, lambda smap: smap if is_done(smap, move) else
                                  after_move(smap, move, replicas))
        self.on_map(raw)
        op.step["retire_after_ms"] = int((time.time() + op.retire_grace_s) * 1000)
        if "fenced_at_ms" in op.step:  # fence -> switch: how long the range was unavailable
            op.fenced_s += max(0.0, time.time() - op.step["fenced_at_ms"] / 1000)
        return "drop"

    def _phase_drop(self, op: ScaleOp, move: Move) -> str:
        self._change(move.src, src_rids(op), RangeAction.DROP, move.lo, move.hi)
        return "retire" if move.kind == "merge" else "done"

    def _phase_retire(self, op: ScaleOp, move: Move) -> str:
        wait_s = op.step["retire_after_ms"] / 1000 - time.time()
        if wait_s > 0:
            time.sleep(min(wait_s, 1.0))
            if wait_s > 1.0:
                return "retire"
        retire_group(self.store, move.src, src_rids(op), self.data_dirs)
        return "done"

    # -- helpers -----------------------------------------------------------------------
    def _call(self, spec, method: str, args: tuple) -> Any:
        return self._group_call(spec.shard, _rids(spec.replicas), method, args)

    def _group_call(self, shard: int, rids: tuple[int, ...], method: str, args: tuple) -> Any:
        answer = leader_call(self.store, shard, rids, method, args, timeout_s=PHASE_CALL_TIMEOUT_S)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _change(self, shard: int, rids: tuple[int, ...], action: RangeAction, lo: bytes, hi: bytes | None,
                rows: tuple = (), gen: int = 0) -> None:
        """One range change, carrying this driver's epoch (and ingest attempt ``gen``)."""
        change = RangeChange(action, lo, hi, rows, self.epoch, gen)
        result = self._group_call(shard, rids, "change_range", (change,))
        if isinstance(result, Failed) and result.code is ErrorCode.STALE_DRIVER:
            raise DriverSupersededError(f"shard {shard}: {action.name} refused: {result.detail}")
        if isinstance(result, Failed):
            raise PlacementError(f"shard {shard}: {action.name} refused: {result.detail}")
        if not isinstance(result, Ok):
            raise PlacementError(f"shard {shard}: {action.name} answered {result!r}")


def _rids(replicas) -> tuple[int, ...]:
    return tuple(rid for rid, _ in replicas)


def _size(rows) -> int:
    return sum(len(k) + len(v) for k, v in rows)


def retire_group(store: str, shard: int, rids: tuple[int, ...], data_dirs) -> None:
    """Shut down and remove the replicas ``rids`` of a merged-away shard, and delete its data on every host."""
    if shard == META_SHARD:
        raise PlacementError("the meta group is never retired")
    handles = groups.running(store, shard, rids)
    stops = {rid: h.shutdown.remote() for rid, h in handles.items()}  # all at once
    for rid, ref in stops.items():
        try:
            ray.get(ref, timeout=30)
        except Exception as exc:  # noqa: BLE001 -- a dead replica has nothing to close
            log.info("retiring replica %s of shard %s: %s", rid, shard, exc)
        ray.kill(handles[rid], no_restart=True)
    roots = {host: str(data_dirs if isinstance(data_dirs, str) else data_dirs.get(host)) for host in cluster_hosts()
             if isinstance(data_dirs, str) or data_dirs.get(host) is not None}
    groups.remove_shard_data(roots, store, shard)  # one task per host, in parallel
