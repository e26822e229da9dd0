"""Helpers for tests that run the whole app against the test ground."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit


def ground_endpoints(ground: dict[str, Any], store_dir: Path) -> dict[str, Any]:
    """Config overrides that point an app at the test ground's engine, registry and hub,
    with its store in ``store_dir``. Callers add their own ``image_prefix`` (under the
    ground's), so each test run really builds."""
    return {
        "registry_url": ground["registry_url"],
        "hub_url": ground["hub_url"],
        "hub_api_token": ground["hub_api_token"],
        "hub_id": ground["hub_service"],
        "docker_host": ground["docker_host"],
        "build_image": ground["images"]["builder"],
        "store_path": str(store_dir / "store.sqlite"),
        "allowed_outbound_networks": ground_outbound(ground),
    }


def ground_outbound(ground: dict[str, Any]) -> list[str]:
    """``allowed_outbound_networks`` for the ground's git server: loopback, where the
    single-node ground serves it, plus the multi-node ground's git container address."""
    networks = ["127.0.0.0/8", "::1/128"]
    host = urlsplit(ground.get("git_base_url", "")).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return networks
    if not address.is_loopback:
        networks.append(str(ipaddress.ip_network(address)))
    return networks


def spec_for(ground: dict[str, Any], repo: str, ref: str | None = None) -> str:
    """The ``git/...`` launch spec of a test-ground repository (its head by default)."""
    info = ground["repos"][repo]
    return f"git/{quote(info['url'], safe='')}/{ref or info['head']}"
