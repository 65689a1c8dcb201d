"""A multi-host Ray test bed on one Linux machine: each host a network namespace (root only).

:class:`HostBed` builds, for one test or one Jepsen run:

* a private network: a namespace of its own (``rkbed-<tag>-net``) holding a Linux bridge, so
  nothing of the bed is in the machine's own network namespace and no packet of it can leave
  the bridge (there is no route anywhere else);
* a head host (``rkbed-<tag>-head``, address ``10.77.0.1``) running Ray's head (GCS) and the
  drivers, without the ``raykv-host`` label, so a partition between replica hosts leaves Ray's
  control plane whole;
* N replica hosts ``h1..hN`` (``10.77.0.11..``), each a namespace running one Ray node
  (``ray start --address=HEAD --labels raykv-host=hN``) with its own Ray temp folder and its own
  data root: a small ext4 filesystem in a loop-mounted image file, so a nemesis can fill a
  host's disk (not tmpfs: LMDB maps its file, and on a full tmpfs touching a page of a sparse
  file raises SIGBUS, which a real disk never does).

Everything is torn down on exit, also when the test fails: the processes of each namespace
(``ip netns pids``: exactly the ones the bed started, by id), the disk mounts, the namespaces
(which removes the bridge and every veth) and the bed's folder. Nothing here runs ``ray stop``.

Requirements: Linux, root, iproute2 (``ip``, ``tc``), nftables (``nft``) and e2fsprogs
(``mkfs.ext4``); :func:`ensure_tools` installs the Debian package for a missing one. Ray's token authentication is disabled for the
bed's processes (the bed is a private network; see the Ray facts note).

A driver enters the head's namespace with :func:`enter_netns` before it starts any thread, then
``ray.init(address=bed.head_address)``; :mod:`raykv.testing.jepsen` does exactly that.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import tcpbackoff
from ..protocol import HOST_LABEL

SUBNET = "10.77.0"
HEAD_IP = f"{SUBNET}.1"
RAY_PORT = 6379
DEFAULT_DISK_MB = 256
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "mkfs.ext4": "e2fsprogs", "sysctl": "procps"}
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # a private network; a stray ~/.ray/auth_token must not turn auth on
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
}
"""Environment of every Ray process of the bed (and of its drivers)."""
CLONE_NEWNET = 0x40000000


class HostBedError(RuntimeError):
    """The bed cannot be built here (not Linux, not root, a tool missing) or a step of it failed."""


def unavailable_reason() -> str | None:
    """Why no bed can be built on this machine (None: one can)."""
    if sys.platform != "linux":
        return "the host test bed needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the host test bed needs root (network namespaces, nftables, loop mounts)"
    if not Path("/run").is_dir() or shutil.which("ip") is None and shutil.which("apt-get") is None:
        return "the host test bed needs iproute2 (or apt-get to install it)"
    return None


def ensure_tools() -> None:
    """Install (apt-get) the Debian package of every missing tool in :data:`TOOLS`."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HostBedError(f"missing {', '.join(missing)} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise HostBedError(f"could not install {', '.join(missing)}: {done.stderr[-500:]}")


def run(cmd: Sequence[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run one command, text output captured; a failure (``check``) raises HostBedError with its stderr."""
    done = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HostBedError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


def enter_netns(netns: str) -> None:
    """Move the calling thread into network namespace ``netns`` (``/run/netns/<netns>``).

    Contract: call it from the main thread before any other thread starts (threads inherit the
    namespace of the thread that creates them; ones started earlier stay where they were)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HostBedError(f"setns({netns}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """One host of the bed: ``name`` is ``head`` or the ``raykv-host`` label ``h1..hN``."""

    name: str
    netns: str
    ip: str
    folder: Path

    @property
    def labelled(self) -> bool:
        return self.name != "head"

    @property
    def data(self) -> Path:
        """The host's data root (an ext4 filesystem of the bed's disk size on a replica host)."""
        return self.folder / "data"

    @property
    def ray_temp(self) -> Path:
        return self.folder / "ray"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


class HostBed:
    """N replica hosts and a head in network namespaces on a private bridge; see the module docstring.

    Use as a context manager; ``close`` is idempotent and runs even when ``start`` failed half way."""

    def __init__(self, hosts: int = 3, disk_mb: int = DEFAULT_DISK_MB, head_cpus: int = 2, host_cpus: int = 1,
                 folder: str | os.PathLike | None = None, tcp_rto_max_ms: int = tcpbackoff.RECOMMENDED_MS,
                 keep_logs: bool = False, keepalive_timeout_ms: int = tcpbackoff.KEEPALIVE_TIMEOUT_MS) -> None:
        """``tcp_rto_max_ms``: the cap on TCP's retransmission backoff in every host's namespace (the
        ``net.ipv4.tcp_rto_max_ms`` sysctl, Linux 6.15+; left alone on older kernels): by default
        what raykv's deploy scripts set (:mod:`raykv.tcpbackoff`), 120000 for the kernel's own.
        ``keepalive_timeout_ms``: Ray's gRPC keepalive timeout in every Ray process of the bed (by
        default what the deploy sets; 120000 is Ray's own).
        ``keep_logs``: leave the bed's folder (each host's Ray session logs) when it closes."""
        if not 1 <= hosts <= 50:
            raise HostBedError(f"hosts must be 1..50, got {hosts}")
        self.tag = secrets.token_hex(3)
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix=f"rkbed-{self.tag}-", dir="/tmp"))
        self.disk_mb = disk_mb
        self.head_cpus = head_cpus
        self.host_cpus = host_cpus
        self.tcp_rto_max_ms = tcp_rto_max_ms
        self.keep_logs = keep_logs
        self.keepalive_timeout_ms = keepalive_timeout_ms
        self.net_ns = f"rkbed-{self.tag}-net"
        self.head = self._host("head", HEAD_IP)
        self.hosts = tuple(self._host(f"h{i}", f"{SUBNET}.{10 + i}") for i in range(1, hosts + 1))
        self._made_ns: list[str] = []
        self._mounts: list[Path] = []

    def _host(self, name: str, ip: str) -> Host:
        return Host(name, f"rkbed-{self.tag}-{name}", ip, self.folder / name)

    # -- the bed's lifetime ------------------------------------------------------------------------
    def __enter__(self) -> "HostBed":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Build the network, the data roots, then start Ray on the head and on every host."""
        reason = unavailable_reason()
        if reason:
            raise HostBedError(reason)
        ensure_tools()
        self._make_network()
        for host in self.all_hosts:
            self._make_folders(host)
        self.start_ray(self.head)
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            list(pool.map(self.start_ray, self.hosts))

    def close(self) -> None:
        """Kill every process of the bed's namespaces, unmount, delete namespaces and folder.
        Goes on past a step that fails (it names the processes it could not kill on stderr)."""
        for netns in reversed(self._made_ns):
            try:
                self._kill_netns(netns)
            except HostBedError as e:
                print(f"raykv host bed: {e}", file=sys.stderr)
        for mount in reversed(self._mounts):
            if run(["umount", str(mount)], check=False).returncode != 0:
                run(["umount", "-l", str(mount)], check=False)
        self._mounts.clear()
        for netns in reversed(self._made_ns):
            run(["ip", "netns", "del", netns], check=False)
        self._made_ns.clear()
        if self.keep_logs:
            print(f"raykv host bed: logs kept in {self.folder}", file=sys.stderr)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def all_hosts(self) -> tuple[Host, ...]:
        return (self.head, *self.hosts)

    @property
    def head_address(self) -> str:
        return f"{HEAD_IP}:{RAY_PORT}"

    def host(self, name: str) -> Host:
        for host in self.all_hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in the bed ({', '.join(h.name for h in self.all_hosts)})")

    def data_dirs(self) -> dict[str, str]:
        """``raykv-host -> data root``: what :func:`raykv.start` takes as ``data_dir``."""
        return {h.name: str(h.data) for h in self.hosts}

    # -- network -----------------------------------------------------------------------------------
    def _add_netns(self, netns: str) -> None:
        run(["ip", "netns", "add", netns])
        self._made_ns.append(netns)
        run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def _make_network(self) -> None:
        self._add_netns(self.net_ns)
        run(["ip", "-n", self.net_ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.net_ns, "link", "set", "br0", "up"])
        for host in self.all_hosts:
            self._add_netns(host.netns)
            port = f"v{host.name}"
            run(["ip", "-n", self.net_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", host.netns])
            run(["ip", "-n", self.net_ns, "link", "set", port, "master", "br0", "up"])
            run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0"])
            run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
            if tcpbackoff.SYSCTL.exists():
                run(host.exec_argv(["sysctl", "-q", "-w", f"net.ipv4.tcp_rto_max_ms={self.tcp_rto_max_ms}"]))

    # -- disks -------------------------------------------------------------------------------------
    def _make_folders(self, host: Host) -> None:
        host.ray_temp.mkdir(parents=True, exist_ok=True)
        host.data.mkdir(parents=True, exist_ok=True)
        if host.labelled:
            image = host.folder / "disk.img"
            with open(image, "wb") as f:
                f.truncate(self.disk_mb << 20)
            run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
            run(["mount", "-o", "loop", str(image), str(host.data)])
            self._mounts.append(host.data)

    def wipe_disk(self, host: Host) -> None:
        """Empty ``host``'s data root (the host comes back without its disk). Its processes must be dead."""
        for child in host.data.iterdir():
            if child.name == "lost+found":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- processes ---------------------------------------------------------------------------------
    def ray_env(self, host: Host) -> dict[str, str]:
        """The environment of ``host``'s Ray processes (and of a driver on the head): the bed's
        Ray settings, and a raykv home of the host's own (where a host keeps its store pointers:
        the hosts of a bed, and two beds, must not share one)."""
        return {**os.environ, **RAY_ENV, tcpbackoff.KEEPALIVE_ENV: str(self.keepalive_timeout_ms),
                "RAYKV_HOME": str(host.folder / "raykv-home")}

    def start_ray(self, host: Host) -> None:
        """Start (or restart, after a kill) the Ray node of ``host``; returns once it joined."""
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--node-ip-address", host.ip, "--temp-dir", str(host.ray_temp), "--disable-usage-stats"]
        if host.labelled:
            argv = [ray, "start", "--address", self.head_address, "--num-cpus", str(self.host_cpus),
                    "--labels", f"{HOST_LABEL}={host.name}", *common]
        else:
            argv = [ray, "start", "--head", "--port", str(RAY_PORT), "--num-cpus", str(self.head_cpus),
                    "--include-dashboard=false", *common]
        log = (host.folder / "ray-start.log").open("a")
        done = subprocess.run(host.exec_argv(argv), env=self.ray_env(host), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if done.returncode != 0:
            tail = (host.folder / "ray-start.log").read_text()[-1500:]
            raise HostBedError(f"ray start on {host.name} failed ({done.returncode}):\n{tail}")

    def pids(self, host: Host) -> list[int]:
        """Every process running in ``host``'s network namespace."""
        return self._netns_pids(host.netns)

    @staticmethod
    def _netns_pids(netns: str) -> list[int]:
        """The processes in ``netns`` but this one (a driver that entered the head's namespace)."""
        out = run(["ip", "netns", "pids", netns], check=False).stdout
        return [pid for pid in map(int, out.split()) if pid != os.getpid() and not _zombie(pid)]

    def signal_host(self, host: Host, sig: int) -> list[int]:
        """Send ``sig`` to every process of ``host``; returns the pids it reached."""
        return signal_all(self.pids(host), sig)

    def kill_host(self, host: Host, timeout_s: float = 10.0) -> None:
        """SIGKILL every process of ``host`` (SIGCONT first: a paused one) and wait until none is left."""
        self._kill_netns(host.netns, timeout_s)

    def _kill_netns(self, netns: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self._netns_pids(netns)
            if not pids:
                return
            signal_all(pids, signal.SIGCONT)
            signal_all(pids, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise HostBedError(f"processes {pids} of {netns} outlived SIGKILL for {timeout_s}s")
            time.sleep(0.05)

    def netns_run(self, host: Host, argv: Sequence[str], check: bool = True,
                  stdin: str | None = None) -> subprocess.CompletedProcess:
        """``argv`` (a network tool: nft, tc, ip) run in ``host``'s namespace."""
        return run(host.exec_argv(argv), check=check, stdin=stdin)


def _zombie(pid: int) -> bool:
    """True when ``pid`` has exited (only its parent's wait is missing) or is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def signal_all(pids: Iterable[int], sig: int) -> list[int]:
    """Send ``sig`` to each pid that still exists; returns the ones it reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached
