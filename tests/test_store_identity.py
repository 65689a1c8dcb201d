"""The pure rules of which store a start opens (raykv.placement.identity): create, reopen or refuse."""

from __future__ import annotations

import pytest

from raykv.errors import (
    ConfigError,
    CorruptStoreError,
    StoreExistsError,
    StoreIdentityError,
    StoreNotFoundError,
    UnavailableError,
)
from raykv.placement import META_SHARD, new_shard_map
from raykv.placement.identity import (
    HostTraces,
    StartMode,
    StoreIdentity,
    check_reopen,
    decode_pointer,
    encode_pointer,
    plan_start,
    root_for,
)

HOSTS = ["h1", "h2", "h3"]
META = ((1, "h1"), (2, "h2"), (3, "h3"))


def _identity(store_id: str = "a" * 32, **kw) -> StoreIdentity:
    fields = dict(name="s", store_id=store_id, created_ms=1, shards=3, replicas=3,
                  data_dirs={h: "/d" for h in HOSTS}, meta=META)
    fields.update(kw)
    return StoreIdentity(**fields)


def _held(host: str, rid: int, root: str = "/d", pointer: str | None = "/d", identity=None) -> HostTraces:
    return HostTraces(host, root, pointer, identity or _identity(), {META_SHARD: [rid], 1: [rid]})


def test_identity_and_pointer_round_trip_and_corruption_is_named() -> None:
    ident = _identity()
    assert StoreIdentity.decode(ident.encode(), "/x") == ident
    assert decode_pointer(encode_pointer(ident.store_id, "/data"), "/p") == "/data"
    for raw in (b"", b"{", b'{"format": 9}', b"[1]"):
        with pytest.raises(CorruptStoreError, match="/x"):
            StoreIdentity.decode(raw, "/x")
        with pytest.raises(CorruptStoreError, match="/p"):
            decode_pointer(raw, "/p")


def test_the_root_asked_for_wins_then_the_pointer_then_the_default() -> None:
    assert root_for("/asked", "/pointed", "/default") == "/asked"
    assert root_for(None, "/pointed", "/default") == "/pointed"
    assert root_for(None, None, "/default") == "/default"


def test_no_trace_anywhere_creates_unless_only_reopening() -> None:
    empty = [HostTraces(h, "/d") for h in HOSTS]
    assert plan_start("s", empty, None, data_dir_asked=False).mode is StartMode.CREATE
    assert plan_start("s", empty, True, data_dir_asked=True).mode is StartMode.CREATE
    with pytest.raises(StoreNotFoundError, match="no host holds any trace"):
        plan_start("s", empty, False, data_dir_asked=False)


def test_any_trace_reopens_and_refuses_to_create() -> None:
    traces = [_held(h, i + 1) for i, h in enumerate(HOSTS)]
    plan = plan_start("s", traces, None, data_dir_asked=False)
    assert plan.mode is StartMode.REOPEN and plan.identity == _identity()
    assert plan.found[META_SHARD] == {1: "h1", 2: "h2", 3: "h3"}
    with pytest.raises(StoreExistsError, match="already exists"):
        plan_start("s", traces, True, data_dir_asked=False)
    only_identity = [HostTraces("h1", "/d", None, _identity()), HostTraces("h2", "/d"), HostTraces("h3", "/d")]
    with pytest.raises(StoreExistsError):  # an identity alone is a trace: a half-created store
        plan_start("s", only_identity, True, data_dir_asked=False)


def test_a_data_dir_other_than_where_the_store_lives_is_refused() -> None:
    traces = [HostTraces("h1", "/elsewhere", pointer="/d"), HostTraces("h2", "/elsewhere"),
              HostTraces("h3", "/elsewhere")]
    with pytest.raises(ConfigError, match=r"keeps its data under /d on h1"):
        plan_start("s", traces, None, data_dir_asked=True)
    with pytest.raises(ConfigError):  # creating there would make a second store of that name
        plan_start("s", traces, True, data_dir_asked=True)


def test_a_reopen_without_a_meta_majority_names_the_missing_hosts() -> None:
    traces = [_held("h1", 1), HostTraces("h4", "/d")]  # h2 and h3 have not rejoined
    with pytest.raises(UnavailableError, match=r"only 1 of its 3 meta replicas.*h2, h3"):
        plan_start("s", traces, None, data_dir_asked=False)
    two = [_held("h1", 1), _held("h2", 2), HostTraces("h4", "/d")]
    assert plan_start("s", two, None, data_dir_asked=False).mode is StartMode.REOPEN


def test_two_stores_of_one_name_are_never_mixed() -> None:
    traces = [_held("h1", 1), _held("h2", 2, identity=_identity("b" * 32)), _held("h3", 3)]
    with pytest.raises(StoreIdentityError, match="two different stores"):
        plan_start("s", traces, None, data_dir_asked=False)


def test_a_store_from_before_identities_reopens_from_its_directories() -> None:
    traces = [HostTraces(h, "/d", None, None, {META_SHARD: [i + 1]}) for i, h in enumerate(HOSTS)]
    plan = plan_start("s", traces, None, data_dir_asked=False)
    assert plan.mode is StartMode.REOPEN and plan.identity is None


def test_a_directory_seen_from_several_hosts_goes_to_its_planned_host() -> None:
    shared = {META_SHARD: [1, 2, 3]}  # one machine: every host sees every directory
    traces = [HostTraces(h, "/d", None, _identity(), shared) for h in HOSTS]
    found = plan_start("s", traces, None, data_dir_asked=False).found[META_SHARD]
    assert sorted(found.values()) == HOSTS


def test_reopen_options_must_match_the_store_and_groups_need_a_majority() -> None:
    smap = new_shard_map("s", 4, 3, HOSTS)
    check_reopen("s", smap, None, None, set(HOSTS))
    check_reopen("s", smap, 4, 3, set(HOSTS))
    with pytest.raises(ConfigError, match=r"has 4 shards, not 2.*raykv scale -n s --shards 2"):
        check_reopen("s", smap, 2, None, set(HOSTS))
    with pytest.raises(ConfigError, match="has 3 replicas per shard, not 5"):
        check_reopen("s", smap, None, 5, set(HOSTS))
    check_reopen("s", smap, None, None, {"h1", "h2"})  # a majority of each group
    with pytest.raises(UnavailableError, match=r"shard 1 misses h2, h3"):
        check_reopen("s", smap, None, None, {"h1"})


def test_an_unfinished_creation_is_resumed_founding_only_where_the_identity_is() -> None:
    draft = _identity(complete=False)
    traces = [HostTraces("h1", "/d", "/d", draft, {META_SHARD: [1]}), HostTraces("h2", "/d", "/d", draft),
              HostTraces("h3", "/d")]  # h3's data root was lost: it must not found
    plan = plan_start("s", traces, None, data_dir_asked=False)
    assert plan.mode is StartMode.RESUME and plan.founding_hosts == {"h1", "h2"}
    with pytest.raises(StoreExistsError):
        plan_start("s", traces, True, data_dir_asked=False)
    lost = [HostTraces("h1", "/d", "/d", draft), HostTraces("h2", "/d"), HostTraces("h3", "/d")]
    with pytest.raises(UnavailableError, match=r"did not finish being created.*h2, h3 do not"):
        plan_start("s", lost, None, data_dir_asked=False)
    done = [HostTraces("h1", "/d", "/d", draft), _held("h2", 2), _held("h3", 3)]  # one start finished it
    assert plan_start("s", done, None, data_dir_asked=False).mode is StartMode.REOPEN
