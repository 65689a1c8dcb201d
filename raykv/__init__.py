"""raykv: a linearizable, sharded key-value store that runs on Ray.

Today the package holds the pure Raft core (:mod:`raykv.raft`) and its seeded
deterministic simulator (:mod:`raykv.testing.sim`). The LMDB replicas, the Ray
runtime and the client build on these.
"""

__version__ = "0.1.0"
