"""The replica engine: one replica of one shard, every Raft and kv decision, no I/O of its own.

:class:`~raykv.replica.engine.ReplicaEngine` owns the Raft node (:mod:`raykv.raft`), the kv
state machine (:mod:`raykv.kv`), the requests waiting for answers and the replica's
quiescing. Two shells drive the very same object: the Ray actor's loop
(:mod:`raykv.runtime.loop`) and the simulator's model of it
(:mod:`raykv.testing.simshell`). Neither makes a decision; they move bytes and time.

**Construction.** ``ReplicaEngine(node_id, shard, storage, options, rng, shell, at)``:
``storage`` and ``shell`` are the two ports of :mod:`raykv.replica.ports`;
``at`` is a :class:`~raykv.replica.clock.Stamp`. What a starting replica may be
(founder, reopened, empty joiner, or *amnesiac*: it existed but its data is gone)
is decided first by :func:`~raykv.replica.startup.start_mode`; an amnesiac runs
:class:`~raykv.replica.amnesiac.AmnesiacReplica`, which has the same inputs and
takes no part in Raft.

**Inputs.** Every input carries the ``Stamp`` of the moment the shell hands it over
(never the start of a turn) and first moves the engine's time to it:

* Raft: ``deliver(messages, at)``, ``deliver_snapshot(message, at)``,
  ``unreachable(peers, at)``, ``snapshot_sent(peer, ok, at)``, ``probe_failed(peer, reason, at)``,
  ``on_time(at)`` (nothing arrived, time passed);
* clients, each with a request id ``rid`` the shell chooses: ``submit(rid, writes, at)``,
  ``register_session(rid, at)``, ``read_keys(rid, keys, consistency, at)``,
  ``scan(rid, start, end, limit, consistency, at)``, ``read(rid, query, consistency, at)``
  (any query over the storage, e.g. a backup export);
* control: ``change_range(rid, change, at)``, ``range_rows``, ``range_stats``,
  ``change_membership(rid, cc, at)``, ``transfer_leader(rid, target, at)``.

**The turn.** ``process(at)`` ends a turn: it starts one ReadIndex round per kind of read,
runs the Ready contract for every Ready (:mod:`raykv.replica.readyloop`: persist through
the storage port, one synced write -- then send through the shell -- then apply -- then
serve reads -- then advance), does upkeep (compaction, session expiry, quiescing) and
returns the answers ``[(rid, value), ...]`` produced since the previous call. Answers
are values, never exceptions; a write's answer comes only once it is applied.
``sleep_s(at)`` says how long the shell may wait for input; ``stop(at)`` refuses
everything from then on and answers what is pending.

**Outputs** are calls on the ports, made only in the contract's order: ``storage.persist``
(returns once synced) before ``shell.send``/``shell.send_snapshot`` of anything that
depends on it, ``storage.apply`` after the send unless fused into the persist; plus
``shell.probe(peer)`` (a quiet follower asks its leader's *loop* whether it lives).

**Rules the shells must keep** (the simulator shows what breaks without each,
:mod:`raykv.testing.scenarios`): stamp every input when it is handed over; read a
clock that counts through a suspend; answer probes from the loop, not a side thread;
let one process at a time open a replica's directory; never found a replica that existed.

Status: ``status()`` (one plain dict), ``gauges()`` and ``counters`` for metrics.
"""
