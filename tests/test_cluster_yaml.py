"""``cluster.yaml`` (AWS) and ``deploy/cluster-onprem.yaml`` (local provider) are real Ray cluster-launcher
configurations: Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before calling the
cloud; no cloud SDK or credentials needed) accept them, and mutated copies are rejected, so the validator
is really checking. On top of the schema, the raykv invariants of a deployment:

* every replica node's start command prepares its disk (``deploy/node-prepare.sh``) first, then starts Ray
  with the ``raykv-host`` label read from the node's identity file, and the data dir in its environment;
* the head has no replica capacity: no ``raykv-host`` label, no CPUs;
* at least 3 replica nodes, and a fixed number of them (the autoscaler never removes a node holding data);
* token authentication on every ``ray start`` or on none, with the token file mounted when it is on;
* every command is a string that bash can parse (YAML turns some unquoted commands into mappings).

The start commands are also *executed* with ``ray`` replaced by a shell function that prints its arguments,
against a scratch directory instead of ``/mnt/raykv``: the identity they produce is accepted by Ray's own
label parser and is stable across runs. Nothing here touches a real disk or starts Ray.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.label_utils import parse_node_labels_string, validate_label_value
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"aws": ROOT / "cluster.yaml", "onprem": ROOT / "deploy" / "cluster-onprem.yaml"}
PREPARE = ROOT / "deploy" / "node-prepare.sh"
TCP_BACKOFF = ROOT / "deploy" / "tcp-backoff.sh"
MOUNT = "/mnt/raykv"
LABEL_ARG = "--labels=raykv-host=$(cat /mnt/raykv/host-id)"
DATA_DIR_ENV = "RAYKV_DATA_DIR=/mnt/raykv/data"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def load(kind: str) -> dict:
    return yaml.safe_load(CONFIGS[kind].read_text())


def prepared(kind: str) -> dict:
    """The config as ``ray up`` sees it: merged with the provider's defaults, then validated."""
    config = prepare_config(load(kind))
    validate_config(config)
    return config


def ray_start_commands(config: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in config[key] if "ray start" in c]


def worker_type(config: dict) -> dict:
    types = config["available_node_types"]
    if config["provider"]["type"] == "local":
        return types[config["head_node_type"]]  # one synthesized type; min/max_workers count the workers
    (name,) = [n for n in types if n != config["head_node_type"]]
    return types[name]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_ray_accepts_the_config(kind: str) -> None:
    config = prepared(kind)
    assert config["cluster_name"].startswith("raykv")
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_command_is_a_string_bash_can_parse(kind: str) -> None:
    config = prepared(kind)
    for key in COMMAND_LISTS:
        for command in config.get(key, []):
            assert isinstance(command, str), f"{key}: YAML made {command!r} a {type(command).__name__}"
            parsed = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=10)
            assert parsed.returncode == 0, f"{key}: bash cannot parse {command!r}: {parsed.stderr}"


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_replica_nodes_get_their_identity_and_data_dir(kind: str) -> None:
    (start,) = [c for c in prepared(kind)["worker_start_ray_commands"] if "ray start" in c]
    assert LABEL_ARG in start and DATA_DIR_ENV in start
    assert start.index("deploy/node-prepare.sh") < start.index("&&") < start.index("ray start"), \
        "the disk and identity must be ready (and the chain stop on failure) before Ray starts"
    assert PREPARE.is_file() and os.access(PREPARE, os.X_OK)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_head_has_no_replica_capacity(kind: str) -> None:
    config = prepared(kind)
    head_starts = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert head_starts and all("raykv-host" not in c for c in head_starts)
    assert all(DATA_DIR_ENV in c for c in head_starts), "job drivers on the head default to the NVMe data dir"
    if config["provider"]["type"] == "local":
        assert all("--num-cpus=0" in c for c in head_starts)
    else:
        head = config["available_node_types"][config["head_node_type"]]
        assert head["resources"].get("CPU") == 0 and "labels" not in head and head["max_workers"] == 0


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_at_least_three_replica_nodes_and_never_scaled_down(kind: str) -> None:
    config = prepared(kind)
    replicas = worker_type(config)
    assert replicas["min_workers"] >= 3
    assert replicas["min_workers"] == replicas["max_workers"] <= config["max_workers"]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_token_auth_on_every_node_or_none(kind: str) -> None:
    config = prepared(kind)
    starts = ray_start_commands(config)
    with_token = [c for c in starts if "RAY_AUTH_MODE=token" in c]
    assert with_token == starts or not with_token, "nodes without the token mode cannot join a token cluster"
    if with_token:
        assert "~/.ray/auth_token" in config["file_mounts"]
    shell_setup = [c for c in config["setup_commands"] if ".bashrc" in c and DATA_DIR_ENV in c]
    assert shell_setup, "`ray exec` shells (where `raykv start` runs) need the data dir and the auth mode too"
    assert all(("RAY_AUTH_MODE=token" in c) == bool(with_token) for c in shell_setup)
    assert all("--metrics-export-port=8080" in c for c in starts)


def test_aws_nodes_share_one_image_and_use_local_nvme() -> None:
    config = prepared("aws")
    types = config["available_node_types"]
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1, "one ImageId to set, not two"
    assert types["replica"]["node_config"]["InstanceType"].startswith("i4i.")
    assert config["provider"]["cache_stopped_nodes"] is False
    assert config["file_mounts"]["~/raykv"] == "."
    assert any("pip install" in c and "-e ~/raykv" in c for c in config["setup_commands"])


# -- the validator really validates ------------------------------------------------------------------------
def mutated(kind: str, change) -> dict:
    config = copy.deepcopy(load(kind))
    change(config)
    return config


def _fractional_resource(c: dict) -> None:
    c["available_node_types"]["replica"]["resources"]["CPU"] = 1.5


def _unknown_top_level_key(c: dict) -> None:
    c["replicas"] = 3


def _unknown_node_type_key(c: dict) -> None:
    c["available_node_types"]["replica"]["labelz"] = {"raykv-role": "replica"}


def _command_as_mapping(c: dict) -> None:
    c["setup_commands"].append({"pip install raykv --resources": '{"a": 4}'})  # the YAML trap, parsed


@pytest.mark.parametrize("change", [_fractional_resource, _unknown_top_level_key, _unknown_node_type_key,
                                    _command_as_mapping])
def test_schema_violations_are_rejected(change) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(mutated("aws", change)))


def test_more_min_workers_than_max_workers_is_rejected() -> None:
    def too_many(c: dict) -> None:
        c["available_node_types"]["replica"].update(min_workers=5, max_workers=5)

    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(mutated("aws", too_many)))


def test_unknown_key_in_the_onprem_config_is_rejected() -> None:
    with pytest.raises(jsonschema.ValidationError, match="worker_start_commands"):
        validate_config(prepare_config(mutated("onprem", lambda c: c.update(worker_start_commands=[]))))


# -- the start commands, executed against a scratch directory --------------------------------------------
def run_start_command(command: str, mount: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` with ``/mnt/raykv`` -> ``mount``, the checkout's node-prepare.sh, and ``ray`` a shell
    function printing one argument per line. The disk is never touched: RAYKV_DEVICE=none, no mount;
    nor the machine's TCP settings: the backoff cap is written to ``mount/tcp_rto_max_ms``."""
    local = (command.replace(MOUNT, str(mount)).replace("~/raykv/deploy/node-prepare.sh", str(PREPARE))
             .replace("~/raykv/deploy/tcp-backoff.sh", str(TCP_BACKOFF)))
    assert MOUNT not in local
    script = 'ray() { printf "ray-arg:%s\\n" "$@"; }\n' + local
    env = {**os.environ, "RAYKV_MOUNT": str(mount), "RAYKV_DEVICE": "none", "RAY_HEAD_IP": "10.0.0.10",
           "RAYKV_TCP_RTO_KNOB": str(mount / "tcp_rto_max_ms"), **(env_extra or {})}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)


def ray_args(out: str) -> list[str]:
    return [line[len("ray-arg:"):] for line in out.splitlines() if line.startswith("ray-arg:")]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_worker_start_command_labels_the_node_with_its_disk_identity(kind: str, tmp_path: Path) -> None:
    (start,) = [c for c in prepared(kind)["worker_start_ray_commands"] if "ray start" in c]
    runs = [run_start_command(start, tmp_path, {"RAYKV_ALLOW_UNMOUNTED": "1"}) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    args = [ray_args(r.stdout) for r in runs]
    assert args[0] == args[1], "the identity must not change between restarts"
    assert args[0][:2] == ["start", "--address=10.0.0.10:6379"]
    (labels_arg,) = [a for a in args[0] if a.startswith("--labels=")]
    labels = parse_node_labels_string(labels_arg[len("--labels="):])  # Ray's own parser and validator
    identity = (tmp_path / "host-id").read_text().strip()
    assert labels == {"raykv-host": identity}
    validate_label_value(identity)
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("role", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_node_caps_tcp_retransmission_backoff_before_ray_starts(kind: str, role: str, tmp_path: Path) -> None:
    """A healed replica hears its peers within a second (raykv/tcpbackoff.py), on every node."""
    (start,) = [c for c in prepared(kind)[role] if "ray start" in c]
    assert start.index("tcp-backoff.sh" if role.startswith("head") else "node-prepare.sh") < start.index("ray start")
    knob = tmp_path / "tcp_rto_max_ms"
    knob.write_text("120000\n")
    result = run_start_command(start, tmp_path, {"RAYKV_ALLOW_UNMOUNTED": "1"})
    assert result.returncode == 0, result.stderr
    assert knob.read_text().strip() == "1000"


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_ray_process_keeps_a_cut_off_connection_long_enough(kind: str) -> None:
    """Ray's keepalive timeout is also the TCP user timeout of its worker connections: 15 min on
    every node and in driver shells, so a connection outlives a long cut (raykv/tcpbackoff.py)."""
    from raykv import tcpbackoff

    config = prepared(kind)
    setting = f"{tcpbackoff.KEEPALIVE_ENV}={tcpbackoff.KEEPALIVE_TIMEOUT_MS}"
    starts = ray_start_commands(config)
    assert starts and all(setting in c and c.index(setting) < c.index("ray start") for c in starts)
    assert any(setting in c and ".bashrc" in c for c in config["setup_commands"]), "driver shells too"


def test_a_kernel_without_the_backoff_setting_still_starts_and_says_why(tmp_path: Path) -> None:
    env = {**os.environ, "RAYKV_TCP_RTO_KNOB": str(tmp_path / "absent")}
    result = subprocess.run(["bash", str(TCP_BACKOFF)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0 and "no net.ipv4.tcp_rto_max_ms" in result.stderr
    assert not (tmp_path / "absent").exists()


def test_worker_does_not_start_without_its_data_disk(tmp_path: Path) -> None:
    (start,) = [c for c in prepared("aws")["worker_start_ray_commands"] if "ray start" in c]
    result = run_start_command(start, tmp_path / "mnt")
    assert result.returncode != 0 and "no disk is mounted" in result.stderr
    assert ray_args(result.stdout) == [] and not (tmp_path / "mnt" / "host-id").exists()


def test_identity_is_made_once_per_disk(tmp_path: Path) -> None:
    env = {**os.environ, "RAYKV_MOUNT": str(tmp_path), "RAYKV_DEVICE": "none", "RAYKV_ALLOW_UNMOUNTED": "1",
           "RAYKV_TCP_RTO_KNOB": str(tmp_path / "tcp_rto_max_ms")}
    first = subprocess.run(["bash", str(PREPARE)], capture_output=True, text=True, timeout=30, env=env)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*-[0-9a-f]{8}", first.stdout.strip())
    (tmp_path / "host-id").unlink()  # a blank disk: a new identity
    second = subprocess.run(["bash", str(PREPARE)], capture_output=True, text=True, timeout=30, env=env)
    assert second.returncode == 0 and second.stdout.strip() != first.stdout.strip()


def test_head_start_command_runs_without_a_label(tmp_path: Path) -> None:
    (start,) = [c for c in prepared("aws")["head_start_ray_commands"] if "ray start" in c]
    result = run_start_command(start, tmp_path)
    assert result.returncode == 0, result.stderr
    args = ray_args(result.stdout)
    assert args[:2] == ["start", "--head"] and not any(a.startswith("--labels") for a in args)
