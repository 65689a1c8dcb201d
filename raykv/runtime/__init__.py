"""The Ray shell of raykv: the only package that imports ray.

* :mod:`~raykv.runtime.replica` -- the replica actor (placement, lifecycle);
* :mod:`~raykv.runtime.host` -- the replica's loop around node, store and machine;
* :mod:`~raykv.runtime.transport` -- batched, pipelined one-way Raft messages;
* :mod:`~raykv.runtime.snapshots` -- snapshot streaming in Arrow chunks;
* :mod:`~raykv.runtime.quiesce` -- idle groups stop ticking;
* :mod:`~raykv.runtime.ticker` -- the one place that reads the clock;
* :mod:`~raykv.runtime.faults` -- test-only link faults;
* :mod:`~raykv.runtime.protocol` -- what clients and replicas send each other;
* :mod:`~raykv.runtime.shard` -- starting a shard's replicas.
"""
