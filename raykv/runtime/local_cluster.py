"""A multi-node Ray cluster on one machine, for tests and benchmarks: ``ray.cluster_utils``.

:func:`labelled_cluster` starts a head (CPUs for drivers and tasks) and one 0-CPU raylet per
host name, labelled ``raykv-host=<name>`` (where replicas are pinned), with Ray's sockets and
session files in a private, short ``RAY_TMPDIR`` (Ray's socket paths must fit in 107 bytes),
connects this process, and on exit disconnects, stops every process it started (never
``ray stop``, which is machine-wide), removes the directory and restores ``RAY_TMPDIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import ray

from ..protocol import HOST_LABEL

HOSTS = ("h1", "h2", "h3")


@contextmanager
def labelled_cluster(hosts: Sequence[str] = HOSTS, head_cpus: int = 2, dashboard: bool = False,
                     ) -> Iterator[tuple[object, Path]]:
    """Yields ``(cluster, scratch directory)``; the scratch directory goes away on exit.

    ``dashboard``: also run the head's dashboard (Jobs API, State API) on a free port, read it from
    ``cluster.head_node.address_info["webui_url"]``; it costs ~1.7 GB of RAM (RSS, all dashboard modules) and seconds of start-up."""
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root / "ray")
    (root / "ray").mkdir()
    cluster = None
    try:
        head_args = dict(num_cpus=head_cpus, include_dashboard=dashboard)
        if dashboard:
            head_args["dashboard_port"] = 0  # a free port: other clusters may run on this machine
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        for host in hosts:
            cluster.add_node(num_cpus=0, labels={HOST_LABEL: host})
        ray.init(address=cluster.address)
        yield cluster, root
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(root, ignore_errors=True)
