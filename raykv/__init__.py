"""raykv: a linearizable, sharded key-value store that runs on Ray.

``raykv.start()``, ``raykv.connect()`` and ``raykv.stop()`` (:mod:`raykv.api`) create,
join and shut down a store; they return a :class:`raykv.client.Client`. ``raykv.list_stores()``
says which stores a Ray cluster has; ``raykv.recover()`` re-founds a shard that lost its
majority (docs/operations.md). Importing
``raykv`` alone does not import Ray: the pure layers (:mod:`raykv.raft`,
:mod:`raykv.kv`, :mod:`raykv.placement`) and the simulator stay light.
"""

__version__ = "0.1.0"
__all__ = ["Client", "connect", "list_stores", "recover", "start", "stop"]


def __getattr__(name: str):
    if name in ("start", "connect", "stop", "list_stores", "recover", "api"):
        import importlib

        api = importlib.import_module("raykv.api")
        return api if name == "api" else getattr(api, name)
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'raykv' has no attribute {name!r}")
