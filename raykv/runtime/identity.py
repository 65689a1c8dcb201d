"""The Ray half of a store's identity: ask every host what it holds of a store, record the
identity and the pointers, and clean up after a start that did not finish.

The decisions (create, reopen or refuse) are pure: :mod:`raykv.placement.identity`.
File names: :mod:`raykv.storage.layout`.
"""

from __future__ import annotations

import logging
import os

import ray

from ..placement.identity import HostTraces, StoreIdentity, decode_pointer, encode_pointer, root_for
from ..protocol import HOST_LABEL, NAMESPACE
from ..storage import layout

log = logging.getLogger("raykv.store")

HOST_TASK_TIMEOUT_S = 60.0


def raykv_home() -> str:
    """Where each host keeps its store pointers: ``$RAYKV_HOME`` (read by the caller, so a
    test or a driver can move it), else ``~/.raykv`` (expanded on the host)."""
    return os.environ.get("RAYKV_HOME") or "~/.raykv"


@ray.remote(num_cpus=0)
def _read_traces(store: str, host: str, asked: str | None, default: str, home: str) -> HostTraces:
    pointer_path = layout.pointer_file(home, store, host)
    raw = layout.read_if_exists(pointer_path)
    pointer = decode_pointer(raw, str(pointer_path)) if raw is not None else None
    if pointer is not None and not layout.holds_store(pointer, store):
        log.info("store %s: the pointer %s names %s, which holds nothing of it: ignored", store, pointer_path, pointer)
        pointer = None
    root = root_for(asked, pointer, default)
    identity_path = layout.identity_file(root, store)
    raw = layout.read_if_exists(identity_path)
    identity = StoreIdentity.decode(raw, str(identity_path)) if raw is not None else None
    return HostTraces(host, root, pointer, identity, layout.list_replicas(root, store))


def read_traces(store: str, hosts: list[str], asked: dict[str, str] | None, default: str) -> list[HostTraces]:
    """What each host holds of ``store`` (tasks pinned to each host, in parallel)."""
    home = raykv_home()
    refs = [_read_traces.options(label_selector={HOST_LABEL: h}).remote(
        store, h, asked.get(h) if asked else None, default, home) for h in hosts]
    return ray.get(refs, timeout=HOST_TASK_TIMEOUT_S)


@ray.remote(num_cpus=0)
def _stores_on_host(host: str, home: str) -> dict[str, str]:
    found = {}
    for store in layout.pointer_stores(home, host):
        path = layout.pointer_file(home, store, host)
        raw = layout.read_if_exists(path)
        try:
            root = decode_pointer(raw, str(path)) if raw is not None else None
        except Exception as e:  # noqa: BLE001 -- a damaged pointer: reported by a start of that store
            log.warning("%s", e)
            continue
        if root is not None and layout.holds_store(root, store):
            found[store] = root
    return found


def stores_on_hosts(hosts: list[str]) -> dict[str, dict[str, str]]:
    """Store name -> {host: data root} of every store a host points to and still holds data of
    (tasks pinned to each host, in parallel)."""
    home = raykv_home()
    refs = {h: _stores_on_host.options(label_selector={HOST_LABEL: h}).remote(h, home) for h in hosts}
    found: dict[str, dict[str, str]] = {}
    for host, ref in refs.items():
        for store, root in ray.get(ref, timeout=HOST_TASK_TIMEOUT_S).items():
            found.setdefault(store, {})[host] = root
    return found


def running_stores() -> list[str]:
    """The names of the stores whose router exists (started, not stopped)."""
    prefix, suffix = "raykv:", ":router"
    return sorted(a["name"][len(prefix):-len(suffix)] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix) and a["name"].endswith(suffix))


@ray.remote(num_cpus=0)
def _record(store: str, host: str, root: str, home: str, identity: bytes, pointer: bytes) -> None:
    layout.write_identity(root, store, identity)
    layout.write_pointer(home, store, host, pointer)


def record_identity(identity: StoreIdentity, roots: dict[str, str]) -> None:
    """Write the identity under each host's root and each host's pointer to that root, durably,
    on every host of ``roots`` (host -> data root) in parallel."""
    home, raw = raykv_home(), identity.encode()
    refs = [_record.options(label_selector={HOST_LABEL: h}).remote(
        identity.name, h, root, home, raw, encode_pointer(identity.store_id, root)) for h, root in roots.items()]
    ray.get(refs, timeout=HOST_TASK_TIMEOUT_S)


def leftover_actors(store: str) -> list[str]:
    """Names of the replica actors of ``store`` that exist (the router excluded)."""
    prefix, router = f"raykv:{store}:", f"raykv:{store}:router"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix) and a["name"] != router)


def kill_leftovers(store: str) -> list[str]:
    """Kill, for good, the replica actors of ``store`` left by a start that did not finish
    (their data stays on disk; the next start reopens it). Returns their names."""
    names = leftover_actors(store)
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # gone meanwhile
            pass
    if names:
        log.warning("store %s: removed %d replica actors of a start that did not finish", store, len(names))
    return names
