"""The simulator's model of the Ray shell: one incarnation of one replica around a real engine.

:class:`SimShell` does, in simulated time, what :class:`raykv.runtime.loop.ReplicaLoop`
does in real time, and implements the engine's :class:`~raykv.replica.ports.Shell` port:

* **start**: take the directory lock (a second incarnation fails and is restarted
  later, as Ray would), decide the start mode with the real
  :func:`~raykv.replica.startup.start_mode`, open or create the store, write the
  creation record, build a :class:`~raykv.replica.engine.ReplicaEngine` (or an
  :class:`~raykv.replica.amnesiac.AmnesiacReplica`);
* **turns**: inputs queue in an inbox; a turn hands them to the engine one by one,
  each stamped with the host's clock when it is handed over (each costs simulated
  time: a slow turn is many inputs while time advances), then calls
  ``engine.process()``; what the engine sent and answered leaves when the turn's
  work (including an fsync when something was persisted) is done;
* **crashes**: the world may crash a replica right after a persist (before its
  messages leave) or right after a send (before the separate apply); the engine and
  everything volatile is lost, the store stays, Ray restarts the actor later;
* **faults of the shell itself**: a wedged loop (the process lives, the loop runs
  nothing), slow inputs, a slow disk.

The world's :class:`~raykv.testing.world.ShellModel` can switch the shell to earlier,
unsafe behaviours (stamps per turn, a clock that stops in a suspend, no directory
lock, probes answered off the loop, another start rule) for mutation tests.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..raft.messages import InstallSnapshot, Message
from ..raft.types import EntryKind, Role, Snapshot
from ..replica.amnesiac import AmnesiacReplica
from ..replica.clock import Stamp
from ..replica.engine import ReplicaEngine
from ..replica.memstore import MemoryReplicaStore
from ..replica.startup import StartFacts, StartMode, start_mode
from .invariants import InvariantViolation
from .world import US, Group, World


FREE_DISK_BYTES = 1 << 40
"""What a replica's disk reports free when it is not full."""


class SimCrash(BaseException):
    """The simulated process dies here (a BaseException: no engine code may catch it)."""


class SimShell:
    def __init__(self, world: World, group: Group, node_id: int, hid: int, founders: tuple[int, ...],
                 create: bool, reconstructed: bool = False) -> None:
        self.world, self.group, self.id, self.hid = world, group, node_id, hid
        self.founders, self.create = founders, create
        self.key = (group.gid, node_id)
        self.alive = False
        self.engine = None
        self.storage = None
        self.mode: StartMode | None = None
        self.inbox: deque[tuple[Callable[[Stamp], None], int | None]] = deque()
        """Inputs and what each costs (None: the usual draw)."""
        self.wedged = False
        self.slow_inputs_until_us = 0
        self.slow_disk_until_us = 0
        self._busy = False
        self._turn_stamp: Stamp | None = None
        self._timer_gen = 0
        self._out: list[Callable[[], None]] = []
        self._waiting: dict[int, Callable[[object], None]] = {}
        self._persisted = False
        self._snap_active: set[int] = set()
        self._snap_seq = 0
        self._restart_scheduled = False
        self._resume_with: Callable[[], None] | None = None
        self.after_turn: Callable[[], None] | None = None
        """Scripted tests: called whenever a turn of this incarnation ends."""
        self.start(reconstructed)

    # -- life --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Alive and running a real engine (not amnesiac)."""
        return self.alive and isinstance(self.engine, ReplicaEngine)

    def is_leader(self) -> bool:
        return self.running and self.engine.node.role is Role.LEADER

    def start(self, reconstructed: bool) -> None:
        world, disk = self.world, self.world.hosts[self.hid].disk
        self.incarnation = world.next_id()  # unique in the world: names this process
        if world.model.lock:
            holder = disk.locks.get(self.key)
            if holder is not None and self._holder_alive(holder):
                world.record("lock-refused", self.key)
                world.count("lock_refusals")
                self.restart_later(world.draw_us((200_000, 1_000_000)), reconstructed=True)
                return
            disk.locks[self.key] = self.incarnation
        facts = StartFacts(has_data=self.key in disk.stores, founder=self.create and bool(self.founders),
                           create=self.create, created_before=self.key in disk.created, reconstructed=reconstructed)
        self.mode = (world.model.start_rule or start_mode)(facts)
        world.record("start", self.key, self.mode.value)
        self.alive = True
        self._restart_scheduled = False
        self._disk_full = False  # a new engine starts with room; the first turn reports the truth
        if self.mode is StartMode.AMNESIAC:
            world.count("amnesiac_starts")
            self.engine = AmnesiacReplica(self.id, self.group.gid, "its directory is gone", self)
            return
        self.storage = self._open_storage(disk)
        disk.created.add(self.key)
        checker = self.group.checker
        if reconstructed:
            checker.on_restart(self.id)
        applied = self.storage.applied_index()
        self.group.chains[self.id] = checker.digests.get(applied, b"")
        self.engine = ReplicaEngine(self.id, self.group.gid, self.storage, world.options,
                                    random.Random(world.rng.getrandbits(64)), self, self.stamp(),
                                    observer=_Observer(self), raft=world.raft)
        self._arm_timer(0)

    def _holder_alive(self, incarnation: int) -> bool:
        shells = [self.group.replicas.get(self.id)] + self.group.extra.get(self.id, [])
        return any(s is not None and s is not self and s.incarnation == incarnation and s.alive for s in shells)

    def _open_storage(self, disk):
        store = disk.stores.get(self.key)
        if self.world.storage == "lmdb":
            return self._open_lmdb(disk, store)
        if store is None:
            store = MemoryReplicaStore.founding(self.founders) if self.mode is StartMode.FOUND else MemoryReplicaStore()
            disk.stores[self.key] = store
        return store

    def _open_lmdb(self, disk, path):
        from ..raft import bootstrap_snapshot
        from ..raft.types import HardState
        from ..storage.replica_store import ReplicaId, ReplicaStore

        gid, node_id = self.key
        ident = ReplicaId(f"sim{self.hid}", gid, node_id)
        if path is None:
            path = Path(self.world.data_dir) / f"h{self.hid}-g{gid}-r{node_id}-i{self.incarnation}"
            disk.stores[self.key] = path
            store = ReplicaStore(self.world.data_dir, ident, path=path)
            if self.mode is StartMode.FOUND:
                snapshot = bootstrap_snapshot(self.founders)
                store.persist(HardState(term=snapshot.meta.term, commit=snapshot.meta.index), snapshot=snapshot)
            return store
        return ReplicaStore(self.world.data_dir, ident, path=path, create=False)

    def crash(self) -> None:
        """The process dies: the engine, its inbox and everything not yet sent are lost (Ray
        restarts it later unless its host is down)."""
        if not self.alive:
            return
        self.world.record("crash", self.key)
        self._die()
        if self.world.hosts[self.hid].state != "down":
            self.restart_later(self.world.draw_us((50_000, 1_500_000)))

    def kill(self) -> None:
        """Gone for good (retired, or the older of two incarnations)."""
        self._die()
        self._restart_scheduled = True  # never restarted

    def _die(self) -> None:
        was_alive, self.alive = self.alive, False
        self.engine, self.inbox, self._waiting, self._out = None, deque(), {}, []
        self._busy, self._turn_stamp, self._snap_active, self._resume_with = False, None, set(), None
        if self.storage is not None and self.world.storage == "lmdb":
            self.storage.close()
        self.storage = None
        disk = self.world.hosts[self.hid].disk
        if was_alive and disk.locks.get(self.key) == self.incarnation:
            del disk.locks[self.key]

    def restart_later(self, delay_us: int, reconstructed: bool = True) -> None:
        if self._restart_scheduled:
            return
        self._restart_scheduled = True

        def restart() -> None:
            self._restart_scheduled = False
            if not self.alive and self.world.hosts[self.hid].state != "down" and self._current():
                self.start(reconstructed)

        self.world.after(delay_us, restart)

    def _current(self) -> bool:
        return self.group.replicas.get(self.id) is self or self in self.group.extra.get(self.id, [])

    # -- time ----------------------------------------------------------------------------------------
    def stamp(self) -> Stamp:
        host = self.world.hosts[self.hid]
        return Stamp(host.clock_s(self.world.now_us, self.world.model.clock),
                     (self.world.now_us + host.offset_us) // 1000)

    def can_run(self) -> bool:
        return self.alive and not self.wedged and self.world.host_runs(self.hid)

    def _arm_timer(self, delay_us: int) -> None:
        self._timer_gen += 1
        gen = self._timer_gen

        def fire() -> None:
            if gen == self._timer_gen and self.alive and not self._busy:
                self.post(lambda at: self.engine.on_time(at))

        self.world.after(max(delay_us, 1), fire)

    # -- the inbox and turns ---------------------------------------------------------------------------
    def post(self, fn: Callable[[Stamp], None], cost_us: int | None = None) -> None:
        """Queue an input; ``cost_us``: how long handling it takes (a long stale scan, say)."""
        if not self.alive:
            return
        self.inbox.append((fn, cost_us))
        self.kick()

    def kick(self) -> None:
        """Start a turn if there is work and the loop can run (after a resume or an unwedge too)."""
        if not self.alive or not self.can_run():
            return
        if self._resume_with is not None:
            finish, self._resume_with = self._resume_with, None
            finish()
            return
        if self._busy:
            return
        if not self.inbox:
            self.inbox.append((lambda at: self.engine.on_time(at), None))
        self._busy = True
        self.world.after(1, self._step)

    def _step(self) -> None:
        if not self.alive:
            return
        if not self.can_run():
            self._busy = False  # kick() resumes
            return
        world = self.world
        if self._turn_stamp is None:
            self._turn_stamp = self.stamp()
        if self.inbox:
            fn, cost_us = self.inbox.popleft()
            at = self.stamp() if world.model.stamp_per_input else self._turn_stamp
            if not self._guard(lambda: fn(at)):
                return
            if cost_us is None:
                slow = world.now_us < self.slow_inputs_until_us
                cost_us = world.draw_us(world.costs.slow_input_us if slow else world.costs.input_us)
            world.after(cost_us, self._step)
            return
        self._end_turn()

    def _report_disk(self) -> None:
        """Tell the engine when its host's disk fills up or frees (as the Ray shell's statvfs does)."""
        full = self.world.now_us < self.world.hosts[self.hid].disk_full_until_us
        if full != self._disk_full:
            self._disk_full = full
            self.engine.disk_space(0 if full else FREE_DISK_BYTES, self.stamp())

    def _end_turn(self) -> None:
        world = self.world
        self._persisted = False
        answers: list = []
        if not self._guard(self._report_disk):
            return
        if not self._guard(lambda: answers.extend(self.engine.process(self.stamp()))):
            return
        cost = world.draw_us(world.costs.process_us)
        if self._persisted:
            slow = world.now_us < self.slow_disk_until_us
            cost += world.draw_us(world.costs.slow_fsync_us if slow else world.costs.fsync_us)
        out, self._out = self._out, []
        for rid, value in answers:
            reply = self._waiting.pop(rid, None)
            if reply is not None:
                out.append(lambda reply=reply, value=value: reply(value))
        incarnation = self.incarnation

        def finish() -> None:
            if not self.alive or self.incarnation != incarnation:
                return
            if not self.can_run():  # frozen or wedged before its turn's work was done
                self._resume_with = finish
                return
            for thunk in out:
                thunk()
            self._busy, self._turn_stamp = False, None
            if self.after_turn is not None:
                self.after_turn()
            if self.inbox:
                self.kick()
            else:
                self._arm_timer(int(self.engine.sleep_s(self.stamp()) * US))

        world.after(cost, finish)

    def _guard(self, work: Callable[[], None]) -> bool:
        """Run engine work; a simulated crash ends this incarnation (what it sent before the
        crash still leaves), any other exception is a bug the run reports."""
        try:
            work()
            return True
        except SimCrash:
            sent, self._out = self._out, []
            self.world.count("crashes_mid_turn")
            self.crash()
            for thunk in sent:
                thunk()
            return False
        except InvariantViolation:
            raise
        except Exception as e:  # noqa: BLE001 -- reported as a violation with its type
            raise InvariantViolation("engine error", f"replica {self.key} raised {type(e).__name__}: {e}") from e

    # -- client requests ------------------------------------------------------------------------------
    def request(self, start: Callable[[int, Stamp], None], reply: Callable[[object], None]) -> None:
        """A client call arrived: hand it to the engine; ``reply(value)`` when answered."""
        rid = self.world.next_id()

        def begin(at: Stamp) -> None:
            self._waiting[rid] = reply
            start(rid, at)

        self.post(begin)

    # -- the engine's Shell port -----------------------------------------------------------------------
    def send(self, messages: list[Message]) -> None:
        if self.is_leader() and self.world.rng.random() < self.world.leader_crash_after_persist_rate / 4:
            raise SimCrash()  # a leader dies with its decision made and nothing of it sent
        by_peer: dict[int, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.to, []).append(m)
        for peer, batch in sorted(by_peer.items()):
            self._out.append(lambda peer=peer, batch=tuple(batch): self._transmit(peer, batch))
        if self.world.rng.random() < self.world.crash_after_send_rate:
            raise SimCrash()

    def _transmit(self, peer: int, batch: tuple) -> None:
        world, group = self.world, self.group
        dst = group.host_of.get(peer)
        if dst is None:
            return
        me = self

        def deliver() -> None:
            target = world.target(group, peer)
            if target is not None:
                target.post(lambda at: target.engine.deliver(batch, at))

        world.send(self.hid, dst, deliver, lambda: me.alive and me.post(lambda at: me.engine.unreachable([peer], at)))

    def send_snapshot(self, message: InstallSnapshot) -> None:
        peer = message.to
        dst = self.group.host_of.get(peer)
        if peer in self._snap_active or dst is None:
            return
        self._snap_active.add(peer)
        self._snap_seq += 1
        key, meta = self._export(f"snap-{self.key[0]}-{self.id}-{self.incarnation}-{self._snap_seq}")
        world, group, me, term = self.world, self.group, self, message.term
        incarnation = self.incarnation

        def report(ok: bool) -> None:  # (the exported original stays until the seed ends: copies are made of it)
            if me.alive and me.incarnation == incarnation:
                me._snap_active.discard(peer)
                me.post(lambda at: me.engine.snapshot_sent(peer, ok, at))

        def deliver() -> None:
            target = world.target(group, peer)
            if target is None:
                report(False)
                return
            msg = InstallSnapshot(me.id, peer, term, Snapshot(meta, world.copy_snapshot(key)))
            target.post(lambda at: target.engine.deliver_snapshot(msg, at))
            world.send(dst, me.hid, lambda: report(True), lambda: report(False))

        def lost() -> None:
            report(False)

        transfer_us = world.draw_us((1_000, 50_000))  # streaming the chunks
        self._out.append(lambda: world.send(self.hid, dst, deliver, lost, extra_us=transfer_us))
        world.count("snapshots_sent")

    def _export(self, name: str) -> tuple[bytes, object]:
        """The applied state as a snapshot payload (an Arrow file on LMDB, rows in memory)."""
        if self.world.storage == "lmdb":
            from ..storage.snapshot import export_snapshot

            path = Path(self.world.data_dir) / f"{name}.arrow"
            meta = export_snapshot(self.storage, path)
            key = str(path).encode()
            self.world.keep_snapshot(key, meta, None)
            return key, meta
        meta, rows = self.storage.export()
        key = name.encode()
        self.world.keep_snapshot(key, meta, rows)
        return key, meta

    def snapshot_rows(self, data: bytes):
        payload = self.world.snapshot_payload(data)
        if payload is None:
            raise InvariantViolation("snapshot", f"replica {self.key} installs a snapshot whose payload is gone")
        if self.world.storage == "lmdb":
            from ..storage.snapshot import iter_snapshot_rows

            return lambda: iter_snapshot_rows(Path(data.decode()))
        rows = payload[1]
        return lambda: rows

    def drop_snapshot(self, data: bytes) -> None:
        self.world.drop_snapshot(data)
        if self.world.storage == "lmdb":
            Path(data.decode()).unlink(missing_ok=True)

    def probe(self, peer: int) -> None:
        """Ask the leader's loop whether it lives; no answer within the call deadline fails."""
        world, group, me, incarnation = self.world, self.group, self, self.incarnation
        dst = group.host_of.get(peer)
        answered = [False]

        def fail(reason: str) -> None:
            if not answered[0] and me.alive and me.incarnation == incarnation:
                answered[0] = True
                me.post(lambda at: me.engine.probe_failed(peer, reason, at))

        def answer() -> None:
            answered[0] = True

        def arrive() -> None:
            target = world.target(group, peer)
            if target is None:
                world.send(dst, me.hid, lambda: fail("no such replica"))
            elif world.model.probe_by_loop:
                target.post(lambda at: world.send(target.hid, me.hid, answer))
            elif target.alive and world.host_runs(target.hid):
                world.send(target.hid, me.hid, answer)

        self._out.append(lambda: dst is not None and world.send(self.hid, dst, arrive))
        world.after(int(world.options.call_deadline_s * US), lambda: fail("probe missed its deadline"))

    # -- what the engine persisted (crash points) -------------------------------------------------------
    def note_persist(self, entries) -> None:
        """A write is durable; the process may die right here, before what depends on it is sent
        (a leader that just appended is the recipe of the Raft paper's Figure 8)."""
        self._persisted = True
        rate = self.world.crash_after_persist_rate
        if entries and self.is_leader():
            rate = max(rate, self.world.leader_crash_after_persist_rate)
        if rate and self.world.rng.random() < rate:
            raise SimCrash()


def state_digest(storage) -> bytes:
    """A digest of a replica's whole state machine: user data (raykv's own rows included) and
    client sessions. Replicas at one applied index must agree on it."""
    h = hashlib.blake2b(digest_size=16)
    with storage.view() as view:
        for key, value in view.items_from(b""):
            h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    sessions = sorted(storage.sessions.items()) if hasattr(storage, "sessions") else storage.scan("sessions")
    for sid, blob in sessions:
        h.update(repr(sid).encode() + blob)
    return h.digest()


class _Observer:
    """Feeds what an engine made durable and applied to its group's invariant checker."""

    def __init__(self, shell: SimShell) -> None:
        self.shell = shell
        self.group = shell.group
        self.checker = shell.group.checker

    def persisted(self, hard_state, entries) -> None:
        shell = self.shell
        self.checker.on_persist(shell.id, hard_state, entries, shell.storage)
        shell.note_persist(entries)

    def applied(self, entries) -> None:
        shell, group = self.shell, self.group
        shell._persisted = True
        chain = group.chains.get(shell.id, b"")
        for e in entries:
            h = hashlib.blake2b(chain, digest_size=16)
            h.update(f"{e.index}/{e.term}/{int(e.kind)}/".encode() + e.data)
            chain = h.digest()
            self.checker.on_apply(shell.id, e.index, chain)
            if e.kind is EntryKind.CONF_CHANGE:
                shell.world.conf_applied(group, e.index, shell.engine.node.tracker.conf)
        group.chains[shell.id] = chain

    def installed(self, index: int) -> None:
        chain = self.checker.digests.get(index)
        if chain is None:
            raise InvariantViolation("snapshot", f"group {self.group.gid}: replica {self.shell.id} installed a "
                                     f"snapshot at {index}, a state no replica applied")
        self.group.chains[self.shell.id] = chain
        self.checker.on_apply(self.shell.id, index, chain)
        self.shell.world.count("snapshots_installed")

    def turned(self, node) -> None:
        before = self.checker.max_committed
        self.checker.on_node_state(self.shell.id, node)
        self.shell.world.count("commits", self.checker.max_committed - before)
