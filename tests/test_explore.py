"""raykv.explore without Ray: layout rows, the Raft indices table, leaders per host, latency
summaries, Arrow rows, input checks, and figures drawn from a hand-built StoreStatus.

(The functions that talk to a store, ``open_store``, ``measure_latencies``, ``bulk_load`` and
``count_keys``, run against a real embedded store in tests/test_notebooks.py.)
"""

from __future__ import annotations

import io
import sys

import pytest

from raykv import explore
from raykv.client.status import ReplicaStatus, ShardStatus, StoreStatus
from raykv.errors import InvalidRequestError, RayKVError
from raykv.userdata import encode_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def replica(rid: int, host: str, role: str | None, term: int = 2, commit: int = 10, applied: int = 10,
            alive: bool = True) -> ReplicaStatus:
    if not alive:
        return ReplicaStatus(rid, f"actor-{rid}", host, None, None, None, None, None, None, False)
    return ReplicaStatus(rid, f"actor-{rid}", host, f"{rid:02d}" * 20, role, term, commit, applied, 4096, True)


@pytest.fixture
def status() -> StoreStatus:
    """Two shards over h1..h3: shard 1 led by replica 1 (h1), replica 2 behind; shard 2 led by
    replica 5 (h2), replica 6 dead."""
    first = ShardStatus(1, b"", encode_key("m"), 1, 1, [
        replica(1, "h1", "leader"), replica(2, "h2", "follower", applied=7), replica(3, "h3", "follower")])
    second = ShardStatus(2, encode_key("m"), None, 1, 5, [
        replica(4, "h1", "follower", term=3, commit=20, applied=20),
        replica(5, "h2", "leader", term=3, commit=21, applied=21),
        replica(6, "h3", None, alive=False)])
    return StoreStatus("explored", 1, [first, second])


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_shard_layout_has_one_row_per_replica_with_roles_and_leaders(status) -> None:
    rows = explore.shard_layout(status)
    assert [(r["shard"], r["replica"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert [r["role"] for r in rows] == ["leader", "follower", "follower", "follower", "leader", "dead"]
    assert [r["replica"] for r in rows if r["leader"]] == [1, 5]
    assert rows[0]["range"] == "[-inf, 'm')" and rows[3]["range"] == "['m', +inf)"
    assert rows[0]["node"] == "01010101" and rows[5]["node"] == "" and rows[5]["term"] is None


def test_raft_indices_table_shows_lag_behind_the_shards_highest_commit(status) -> None:
    table = explore.raft_indices_table(status)
    assert list(table.columns) == ["shard", "replica", "host", "role", "term", "commit", "applied", "lag", "alive"]
    lags = dict(zip(table["replica"], table["lag"]))
    assert (lags[1], lags[2], lags[3], lags[4], lags[5]) == (0, 3, 0, 1, 0)
    assert table["lag"].isna().tolist() == [False] * 5 + [True]  # the dead replica has no indices
    assert str(table["commit"].dtype) == "Int64"


def test_leaders_per_host_counts_replicas_and_leaders(status) -> None:
    assert explore.leaders_per_host(status) == {"h1": (2, 1), "h2": (2, 1), "h3": (2, 0)}


def test_latency_summary_gives_percentiles_per_label() -> None:
    summary = explore.latency_summary({"fast": [1.0] * 99 + [10.0], "slow": [5.0, 5.0, 5.0]})
    assert list(summary.index) == ["fast", "slow"]
    assert summary.loc["fast", "n"] == 100 and summary.loc["fast", "p50_ms"] == 1.0
    assert summary.loc["fast", "max_ms"] == 10.0 and summary.loc["slow", "mean_ms"] == 5.0


@pytest.mark.parametrize("bad", [{}, [], {"a": []}, {"a": "12"}])
def test_latency_functions_reject_empty_or_malformed_samples(bad) -> None:
    with pytest.raises(InvalidRequestError):
        explore.latency_summary(bad)
    with pytest.raises(InvalidRequestError):
        explore.plot_latency_histogram(bad)


def test_arrow_rows_builds_ordered_string_keys_and_struct_values() -> None:
    table = explore.arrow_rows(3, prefix="p:", start=7)
    assert table.column_names == ["key", "value"]
    assert table.to_pylist() == [{"key": "p:00000007", "value": {"i": 7, "square": 49}},
                                 {"key": "p:00000008", "value": {"i": 8, "square": 64}},
                                 {"key": "p:00000009", "value": {"i": 9, "square": 81}}]
    assert explore.arrow_rows(0).num_rows == 0


@pytest.mark.parametrize("call", [
    lambda: explore.arrow_rows(-1),
    lambda: explore.arrow_rows(True),
    lambda: explore.measure_latencies(None, n=0),
    lambda: explore.measure_latencies(None, n=2.5),
    lambda: explore.bulk_load(None, explore.arrow_rows(1), batch_rows=0),
])
def test_bad_arguments_raise_before_touching_a_store(call) -> None:
    with pytest.raises(InvalidRequestError):
        call()


def test_bulk_load_line_reports_keys_per_second() -> None:
    load = explore.BulkLoad(rows=5000, seconds=2.0)
    assert load.keys_per_s == 2500 and str(load) == "5,000 keys in 2.00 s: 2,500 keys/s"


def test_figures_render_to_png(status) -> None:
    figures = [explore.plot_shard_map(status), explore.plot_leaders_per_host(status), explore.plot_cluster(status),
               explore.plot_latency_histogram({"linearizable": [1.0, 2.0, 3.0], "stale": [0.2, 0.3, 40.0]})]
    for fig in figures:
        assert png_bytes(fig).startswith(PNG_MAGIC)
    assert len(figures[2].axes) == 2
    shard_map_text = " ".join(t.get_text() for t in figures[0].axes[0].texts)
    assert "r1 (leader)" in shard_map_text and "r5 (leader)" in shard_map_text and "h3" in shard_map_text


def test_plots_draw_on_a_given_axes(status) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert explore.plot_shard_map(status, left) is fig
    assert explore.plot_leaders_per_host(status, right) is fig
    assert left.get_title().startswith("store 'explored'")


@pytest.mark.parametrize("plot", ["plot_shard_map", "plot_leaders_per_host", "plot_cluster", "plot_latency_histogram"])
def test_plotting_without_matplotlib_raises_a_raykv_error(status, monkeypatch, plot) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import of it now fails
    arg = {"a": [1.0]} if plot == "plot_latency_histogram" else status
    with pytest.raises(explore.OptionalDependencyError, match=r"raykv\[notebook\]") as caught:
        getattr(explore, plot)(arg)
    assert isinstance(caught.value, RayKVError) and isinstance(caught.value, ImportError)
