"""The Ray shell of raykv: the only package that imports ray.

* :mod:`~raykv.runtime.replica` -- the replica actor (placement, lifecycle);
* :mod:`~raykv.runtime.loop` -- the thin loop around the replica engine (:mod:`raykv.replica`);
* :mod:`~raykv.runtime.shellport` -- the engine's shell port on Ray;
* :mod:`~raykv.runtime.transport` -- batched, pipelined one-way Raft messages;
* :mod:`~raykv.runtime.snapshots` -- snapshot streaming in Arrow chunks;
* :mod:`~raykv.runtime.faults` -- test-only link faults;
* :mod:`~raykv.runtime.shard` -- starting a shard's replicas;
* :mod:`~raykv.runtime.groups` -- the group port: calling a group's leader, statuses, removing replicas;
* :mod:`~raykv.runtime.store`, :mod:`~raykv.runtime.router`, :mod:`~raykv.runtime.scale`,
  :mod:`~raykv.runtime.repair` -- the store's bootstrap, its router and placement driver.
"""
