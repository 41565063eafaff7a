"""ICE settings of the server: which host candidates it offers, and its STUN/TURN servers.

aioice lists the machine's addresses in one function, ``aioice.ice.get_host_addresses``, called by
``Connection.gather_candidates``; it offers every address but 127.0.0.1. This module is the one
place that replaces that function, so the server offers only ``webrtc.host_addresses`` (loopback
included when listed: tests keep WebRTC on 127.0.0.1). An empty list restores aioice's own
behaviour. The replacement is process-wide (aioice has no per-connection hook), so one process
serves one list: `install_host_addresses` is idempotent and returns what it replaced, and
`host_addresses` is the context-manager form that puts the previous state back on exit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterator, Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from avatar.config import WebRtcConfig
from avatar.errors import ConfigError

_ORIGINAL: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_LOCK = threading.Lock()
_installed: tuple[str, ...] = ()


def _normalise(addresses: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ConfigError(f"webrtc.host_addresses: {text!r} is not an IP address") from None
        if str(address) not in out:
            out.append(str(address))
    return tuple(out)


def _restricted(addresses: tuple[str, ...]) -> Callable[[bool, bool], list[str]]:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = []
        for text in addresses:
            version = ipaddress.ip_address(text).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                chosen.append(text)
        return chosen

    return get_host_addresses


def install_host_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """Make aioice offer only `addresses` as host candidates ([] = aioice's own discovery).

    Idempotent; returns the list that was in force before, so a caller can put it back.
    """
    global _installed
    wanted = _normalise(addresses)
    with _LOCK:
        previous = _installed
        if wanted != previous:
            aioice.ice.get_host_addresses = _restricted(wanted) if wanted else _ORIGINAL  # type: ignore[assignment]
            _installed = wanted
    return previous


def installed_host_addresses() -> tuple[str, ...]:
    """The list in force now (empty: aioice's own discovery)."""
    return _installed


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Offer only `addresses` inside the block; the previous state comes back on exit."""
    previous = install_host_addresses(addresses)
    try:
        yield
    finally:
        install_host_addresses(previous)


def rtc_configuration(config: WebRtcConfig) -> RTCConfiguration:
    """RTCConfiguration with the configured STUN and TURN servers (aiortc uses the first of each)."""
    servers: list[RTCIceServer] = []
    if config.stun_urls:
        servers.append(RTCIceServer(urls=list(config.stun_urls)))
    if config.turn_urls:
        servers.append(
            RTCIceServer(
                urls=list(config.turn_urls),
                username=config.turn_username or None,
                credential=config.turn_password or None,
            )
        )
    return RTCConfiguration(iceServers=servers)
