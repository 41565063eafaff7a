"""Who may open a session, and how many: origins, the stages of a connection, token throttling.

Every limit of admission lives here, as plain objects without I/O, so each can be tested alone and
the per-client protocol (signaling/client.py) only asks questions and reports events:

- `OriginPolicy`: which web origins may open /ws (checked on the HTTP upgrade, before any state).
- `Admission`: the stage of every connection. A new connection is *pending* until its hello is
  accepted; pending connections are bounded per client address and in total, and when a bound is
  reached the oldest pending connection (of that address first) gives way to the new one, so idle
  sockets can delay a real client by one round trip at most, never lock it out. A welcomed client
  is *waiting* (it holds no media slot) until its offer; waiting clients are bounded too, again
  the oldest giving way. A client with an answered offer is *active* and holds one of
  `max_sessions` media slots.
- `AuthThrottle`: failed tokens per client address. A few failures are free; after that the address
  is refused (`rate_limited`) for a back-off that doubles with each further failure, up to a minute.
  Refusal is immediate: other addresses are never slowed down.

Each `Ticket` carries an `evict(code, message)` callback that the owner (the client) provides: the
admission decides who gives way, the client closes its own connection.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from avatar.config import ServerConfig

log = logging.getLogger(__name__)

EXTENSION_SCHEMES = frozenset({"chrome-extension", "moz-extension", "safari-web-extension"})


# --------------------------------------------------------------------------------------------------
# Origins


def is_loopback_host(host: str) -> bool:
    """localhost (and its subdomains), 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginPolicy:
    """Which `Origin` headers may open a WebSocket.

    Allowed: no Origin at all (not a browser: browsers always send one), the page's own origin (the
    Origin's host and port equal the request's Host, over http or https, so a TLS proxy in front
    works), loopback origins, browser-extension origins, and the configured exact origins; `*`
    allows every origin. `null` (sandboxed frames, file: pages) is refused unless `*` is set.
    """

    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self.allow_any = "*" in allowed_origins
        self.exact = frozenset(o.lower() for o in allowed_origins if o != "*")
        if self.allow_any:
            log.warning("server.allowed_origins has '*': any web page may open sessions on this server")

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        if self.allow_any:
            return True
        origin = origin.strip().lower()
        if origin in self.exact:
            return True
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return False
        if parts.scheme in EXTENSION_SCHEMES and parts.netloc:
            return True
        if parts.scheme not in ("http", "https") or not hostname or parts.path not in ("", "/"):
            return False
        if host is not None and parts.netloc == host.strip().lower():
            return True
        return is_loopback_host(hostname)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: frozenset[str]) -> str:
    """The client's address: the socket's peer, or, behind a trusted proxy, the last X-Forwarded-For
    entry (the one that proxy appended; entries before it are the client's word, not evidence)."""
    address = peer or "unknown"
    if forwarded_for and address in trusted_proxies:
        last = forwarded_for.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return address
    return address


# --------------------------------------------------------------------------------------------------
# Stages of a connection


class Stage(Enum):
    PENDING = "pending"  # connected, no accepted hello yet
    WAITING = "waiting"  # welcomed, no offer yet: holds no media slot
    ACTIVE = "active"  # offer answered: holds a media slot
    CLOSED = "closed"


Evict = Callable[[str, str], None]  # (error code, message for a person)


@dataclass(eq=False)
class Ticket:
    """One connection's place in the admission."""

    address: str
    evict: Evict
    stage: Stage = Stage.PENDING


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    reason: str  # for metrics: why the connection was refused


BUSY_TEXT = "The server is busy (all sessions are in use); please try again later."


class Admission:
    """The stage of every connection and the limits on each stage; see the module docstring."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        now: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_evict = on_evict  # (reason) for metrics
        self._pending: dict[Ticket, None] = {}  # insertion-ordered: the oldest first
        self._waiting: dict[Ticket, None] = {}
        self._active: set[Ticket] = set()
        self._pending_by_address: collections.Counter[str] = collections.Counter()
        self.throttle = AuthThrottle(now=now)
        self.draining = False

    # -- counts ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def load(self) -> float:
        """Share of the media slots in use, 0..1 (1 while draining)."""
        return 1.0 if self.draining else min(1.0, self.active / self.config.max_sessions)

    def slot_free(self) -> bool:
        return not self.draining and self.active < self.config.max_sessions

    # -- stages ----------------------------------------------------------------------------------

    def connect(self, address: str, evict: Evict) -> Ticket:
        """A new connection (pending). Makes room by evicting the oldest pending connection of the
        same address, or the oldest of all, when a bound is reached."""
        if self._pending_by_address[address] >= self.config.max_pending_per_address:
            oldest = next(t for t in self._pending if t.address == address)
            message = "Too many connections from your address did not say hello."
            self._evict(oldest, "pending_per_address", "timeout", message)
        if len(self._pending) >= self.config.max_pending_connections:
            self._evict(next(iter(self._pending)), "pending_total", "busy", "Too many connections are opening at once.")
        ticket = Ticket(address, evict)
        self._pending[ticket] = None
        self._pending_by_address[address] += 1
        return ticket

    def check_hello(self, ticket: Ticket) -> Refusal | None:
        """Before the token is checked: is this address throttled?"""
        retry_after = self.throttle.retry_after_s(ticket.address)
        if retry_after > 0:
            return Refusal(
                "rate_limited",
                f"Too many wrong access tokens from your address; try again in {math.ceil(retry_after)} s.",
                "rate_limited",
            )
        return None

    def welcome(self, ticket: Ticket) -> Refusal | None:
        """The hello was accepted: pending -> waiting, unless every media slot is taken (busy)."""
        if ticket.stage is not Stage.PENDING:  # evicted while its hello was on the way
            return Refusal("busy", "This connection was closed to make room for others.", "evicted")
        if not self.slot_free():
            return Refusal("busy", BUSY_TEXT, "busy")
        if len(self._waiting) >= self.config.max_waiting_clients:
            self._evict(next(iter(self._waiting)), "waiting_total", "busy", "Too many clients are waiting to start.")
        self._leave(ticket)
        ticket.stage = Stage.WAITING
        self._waiting[ticket] = None
        return None

    def take_slot(self, ticket: Ticket) -> bool:
        """The offer arrived: waiting -> active when a media slot is free."""
        if ticket.stage is not Stage.WAITING or not self.slot_free():
            return False
        self._leave(ticket)
        ticket.stage = Stage.ACTIVE
        self._active.add(ticket)
        return True

    def release(self, ticket: Ticket) -> None:
        """The connection ended (any stage); idempotent."""
        self._leave(ticket)
        ticket.stage = Stage.CLOSED

    def _leave(self, ticket: Ticket) -> None:
        if ticket.stage is Stage.PENDING and ticket in self._pending:
            del self._pending[ticket]
            self._pending_by_address[ticket.address] -= 1
            if self._pending_by_address[ticket.address] <= 0:
                del self._pending_by_address[ticket.address]
        elif ticket.stage is Stage.WAITING:
            self._waiting.pop(ticket, None)
        elif ticket.stage is Stage.ACTIVE:
            self._active.discard(ticket)

    def _evict(self, ticket: Ticket, reason: str, code: str, message: str) -> None:
        self.release(ticket)
        if self._on_evict is not None:
            self._on_evict(reason)
        ticket.evict(code, message)


# --------------------------------------------------------------------------------------------------
# Token throttling


@dataclass
class _Failures:
    count: int = 0
    last_s: float = 0.0
    locked_until_s: float = 0.0


class AuthThrottle:
    """Failed token attempts per client address: `free_failures`, then a doubling back-off.

    An address is forgiven after `forget_after_s` without failures; the table is bounded
    (`max_addresses`, the stalest forgotten first), so a flood of addresses cannot grow memory.
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        forget_after_s: float = 600.0,
        max_addresses: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.forget_after_s = forget_after_s
        self.max_addresses = max_addresses
        self._now = now
        self._table: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def retry_after_s(self, address: str) -> float:
        entry = self._table.get(address)
        if entry is None:
            return 0.0
        now = self._now()
        if now - entry.last_s > self.forget_after_s:
            del self._table[address]
            return 0.0
        return max(0.0, entry.locked_until_s - now)

    def failed(self, address: str) -> None:
        now = self._now()
        entry = self._table.pop(address, None) or _Failures()
        entry.count += 1
        entry.last_s = now
        if entry.count > self.free_failures:
            backoff = self.first_backoff_s * 2 ** (entry.count - self.free_failures - 1)
            entry.locked_until_s = now + min(self.max_backoff_s, backoff)
        self._table[address] = entry  # the most recent last
        while len(self._table) > self.max_addresses:
            self._table.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._table.pop(address, None)

    def __len__(self) -> int:
        return len(self._table)
