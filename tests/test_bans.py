from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pg_support import open_store_at

from swarmbinder.errors import ConfigError, SpecBanned, SwarmbinderError
from swarmbinder.policy.bans import BanList, InvalidBan, NetworkBanned, validate_ban
from swarmbinder.policy.specpolicy import SpecPolicy
from swarmbinder.store import Store


@pytest.fixture
async def store(store_where: str) -> AsyncIterator[Store]:
    """The admin's bans in a store: SQLite, and a real PostgreSQL database."""
    async with await open_store_at(store_where) as s:
        yield s


def test_config_network_ban_gives_binderhubs_403() -> None:
    bans = BanList(ban_networks={"192.0.2.0/24": "a test network"})
    with pytest.raises(NetworkBanned) as info:
        bans.check_network("192.0.2.77")
    assert info.value.status_code == 403
    assert info.value.user_message == "Requests from a test network are not allowed"
    # The address is for the operator's log, not for the client's message.
    assert "192.0.2.77" not in info.value.user_message
    bans.check_network("192.0.3.1")


def test_ipv6_networks_and_mapped_addresses() -> None:
    bans = BanList(ban_networks={"2001:db8::/32": "v6 cloud", "198.51.100.0/24": "v4 cloud"})
    with pytest.raises(NetworkBanned, match="v6 cloud"):
        bans.check_network("2001:db8:1::5")
    with pytest.raises(NetworkBanned, match="v4 cloud"):
        bans.check_network("::ffff:198.51.100.9")
    bans.check_network("2001:db9::1")


def test_an_unparseable_client_address_is_not_an_error() -> None:
    bans = BanList(ban_networks={"0.0.0.0/0": "everyone"})
    bans.check_network("")
    bans.check_network("unix-socket")


def test_a_bad_config_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ban_networks"):
        BanList(ban_networks={"10.0.0.1/8": "typo"})


@pytest.mark.parametrize(
    ("kind", "pattern", "problem"),
    [
        ("network", "10.0.0.0/33", "not a network"),
        ("network", "10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("network", "example.org", "not a network"),
        ("spec", "org/(repo", "not a valid regular expression"),
        ("spec", "  ", "empty"),
        ("spec", "a\nb", "line breaks"),
        ("user", "x", "kind must be"),
    ],
)
def test_validation_names_the_problem(kind: str, pattern: str, problem: str) -> None:
    with pytest.raises(InvalidBan, match=problem) as info:
        validate_ban(kind, pattern)
    assert info.value.status_code == 400


async def test_admin_bans_apply_at_once_and_survive_a_reload(store: Store) -> None:
    policy = SpecPolicy.from_config(banned_specs=["config-org/.*"])
    bans = BanList(ban_networks={"192.0.2.0/24": "config net"}, policy=policy, store=store)
    await bans.load()

    net = await bans.add("network", "203.0.113.0/24", "abusive host", actor="alice")
    spec = await bans.add("spec", "evil-org/.*", "mining", actor="alice")

    with pytest.raises(NetworkBanned, match="abusive host"):
        bans.check_network("203.0.113.5")
    with pytest.raises(SpecBanned) as info:
        bans.policy.check("Evil-Org/miner/HEAD")
    assert info.value.user_message == (
        "Sorry, Evil-Org/miner/HEAD is not allowed to launch. "
        "Please contact admins for more info! (mining)"
    )
    # The config's bans still hold alongside.
    with pytest.raises(SpecBanned):
        bans.check_spec("config-org/x/HEAD")

    # A fresh BanList over the same store (a restart) sees the admin's bans.
    restarted = BanList(policy=policy, store=store)
    await restarted.load()
    with pytest.raises(NetworkBanned):
        restarted.check_network("203.0.113.5")
    assert [(e.kind, e.pattern, e.source) for e in restarted.entries()] == [
        ("spec", "config-org/.*", "config"),
        ("network", "203.0.113.0/24", "admin"),
        ("spec", "evil-org/.*", "admin"),
    ]

    assert net.ban_id is not None and spec.ban_id is not None
    assert await bans.remove(net.ban_id, actor="bob")
    assert await bans.remove(spec.ban_id, actor="bob")
    bans.check_network("203.0.113.5")
    bans.check_spec("evil-org/miner/HEAD")
    assert not await bans.remove(spec.ban_id, actor="bob")
    assert [e.action for e in await store.audit()] == [
        "ban.remove",
        "ban.remove",
        "ban.add",
        "ban.add",
    ]


async def test_entries_show_where_each_ban_comes_from(store: Store) -> None:
    bans = BanList(ban_networks={"192.0.2.0/24": "config net"}, store=store)
    await bans.add("network", "2001:db8::/32", "", actor="alice")
    entries = bans.entries()
    assert [(e.pattern, e.reason, e.source, e.created_by) for e in entries] == [
        ("192.0.2.0/24", "config net", "config", None),
        ("2001:db8::/32", "", "admin", "alice"),
    ]
    # Without a reason the network itself is the label users see.
    with pytest.raises(NetworkBanned) as info:
        bans.check_network("2001:db8::1")
    assert info.value.user_message == "Requests from 2001:db8::/32 are not allowed"


async def test_an_invalid_ban_never_reaches_the_store(store: Store) -> None:
    bans = BanList(store=store)
    with pytest.raises(InvalidBan):
        await bans.add("spec", "(", "", actor="alice")
    assert await store.list_bans() == []


async def test_a_broken_stored_ban_is_skipped_not_fatal(store: Store) -> None:
    await store.add_ban("spec", "(", "written by an older version", actor="alice")
    await store.add_ban("network", "192.0.2.0/24", "ok", actor="alice")
    bans = BanList(store=store)
    await bans.load()
    assert [e.pattern for e in bans.entries()] == ["192.0.2.0/24"]
    with pytest.raises(NetworkBanned):
        bans.check_network("192.0.2.1")


async def test_changes_without_a_store_are_refused() -> None:
    bans = BanList()
    await bans.load()
    with pytest.raises(SwarmbinderError, match="ban change without a store"):
        await bans.add("spec", "x/.*", "", actor="alice")
