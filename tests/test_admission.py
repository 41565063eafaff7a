"""The admission rules alone: origins, client addresses, stages with their bounds, token throttling."""

from __future__ import annotations

import pytest

from avatar.config import ServerConfig
from signaling.admission import Admission, AuthThrottle, OriginPolicy, Stage, client_address


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8080", True),  # not a browser
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),  # the page's own origin
        ("https://portrait.example.org", "portrait.example.org", True),  # its own, behind a TLS proxy
        ("http://localhost:3000", "127.0.0.1:8080", True),  # loopback, any port
        ("http://127.0.0.5", "127.0.0.1:8080", True),
        ("http://[::1]:9000", "127.0.0.1:8080", True),
        ("http://app.localhost", "127.0.0.1:8080", True),
        ("chrome-extension://abcdefghijklmnop", "127.0.0.1:8080", True),
        ("moz-extension://0b0e4f9c-1111-2222-3333-444455556666", "127.0.0.1:8080", True),
        ("http://evil.example", "127.0.0.1:8080", False),
        ("https://evil.example", "portrait.example.org", False),
        ("http://portrait.example.org.evil.example", "portrait.example.org", False),
        ("http://127.0.0.1.evil.example", "127.0.0.1:8080", False),
        ("null", "127.0.0.1:8080", False),
        ("", "127.0.0.1:8080", False),
        ("file://", "127.0.0.1:8080", False),
        ("chrome-extension://", "127.0.0.1:8080", False),
        ("http://127.0.0.1:99999", "127.0.0.1:8080", False),
        ("javascript:alert(1)", "127.0.0.1:8080", False),
    ],
)
def test_default_origin_policy(origin: str | None, host: str, allowed: bool) -> None:
    assert OriginPolicy(()).allows(origin, host) is allowed


def test_configured_origins() -> None:
    policy = OriginPolicy(("https://call.example.org",))
    assert policy.allows("https://call.example.org", "127.0.0.1:8080")
    assert policy.allows("HTTPS://CALL.EXAMPLE.ORG", "127.0.0.1:8080")
    assert not policy.allows("https://call.example.org:444", "127.0.0.1:8080")
    assert not policy.allows("http://call.example.org", "127.0.0.1:8080")
    anyone = OriginPolicy(("*",))
    assert anyone.allows("http://evil.example", "x") and anyone.allows("null", "x")


def test_client_address_trusts_only_configured_proxies() -> None:
    proxies = frozenset({"127.0.0.1"})
    assert client_address("127.0.0.1", "203.0.113.9", proxies) == "203.0.113.9"
    # Only the entry the proxy appended counts; what the client wrote before it is its own word.
    assert client_address("127.0.0.1", "198.51.100.1, 203.0.113.9", proxies) == "203.0.113.9"
    assert client_address("127.0.0.2", "203.0.113.9", proxies) == "127.0.0.2"  # not a proxy
    assert client_address("127.0.0.1", "not an address", proxies) == "127.0.0.1"
    assert client_address(None, None, proxies) == "unknown"


def _admission(**server: object) -> tuple[Admission, list[tuple[str, str, str]], list[str]]:
    evicted: list[tuple[str, str, str]] = []
    reasons: list[str] = []
    admission = Admission(ServerConfig(**server), on_evict=reasons.append)  # type: ignore[arg-type]
    return admission, evicted, reasons


def _connect(admission: Admission, address: str, name: str, evicted: list[tuple[str, str, str]]):  # type: ignore[no-untyped-def]
    return admission.connect(address, lambda code, message: evicted.append((name, code, message)))


def test_pending_connections_give_way_oldest_first() -> None:
    admission, evicted, reasons = _admission(max_pending_connections=4, max_pending_per_address=2)
    a1 = _connect(admission, "10.0.0.1", "a1", evicted)
    _connect(admission, "10.0.0.1", "a2", evicted)
    assert admission.pending == 2 and not evicted
    a3 = _connect(admission, "10.0.0.1", "a3", evicted)  # the address's bound: its oldest goes
    assert [e[0] for e in evicted] == ["a1"] and a1.stage is Stage.CLOSED
    assert admission.pending == 2 and reasons == ["pending_per_address"]
    _connect(admission, "10.0.0.2", "b1", evicted)
    _connect(admission, "10.0.0.3", "c1", evicted)
    assert admission.pending == 4
    _connect(admission, "10.0.0.4", "d1", evicted)  # the total bound: the oldest of all goes
    assert [e[0] for e in evicted] == ["a1", "a2"] and reasons[-1] == "pending_total"
    assert admission.pending == 4
    assert all(code and message for _, code, message in evicted)
    # A welcomed connection leaves the pending pool, so it never gives way to pending ones.
    assert admission.welcome(a3) is None and a3.stage is Stage.WAITING
    assert admission.pending == 3 and admission.waiting == 1
    # An evicted connection whose hello arrives late is not let back in.
    refusal = admission.welcome(a1)
    assert refusal is not None and refusal.code == "busy" and a1.stage is Stage.CLOSED
    assert admission.waiting == 1


def test_welcome_take_slot_release() -> None:
    admission, evicted, _ = _admission(max_sessions=1, max_waiting_clients=2)
    first = _connect(admission, "a", "first", evicted)
    second = _connect(admission, "b", "second", evicted)
    assert admission.welcome(first) is None and admission.welcome(second) is None
    assert admission.waiting == 2 and admission.active == 0  # waiting clients hold no slot
    assert admission.take_slot(first) and first.stage is Stage.ACTIVE
    assert admission.load == 1.0 and not admission.slot_free()
    assert not admission.take_slot(second)  # the slot filled up meanwhile
    third = _connect(admission, "c", "third", evicted)
    refusal = admission.welcome(third)
    assert refusal is not None and refusal.code == "busy"
    admission.release(first)
    admission.release(first)  # idempotent
    assert admission.active == 0 and admission.load == 0.0
    assert admission.take_slot(second)
    admission.release(second)
    admission.release(third)
    assert (admission.pending, admission.waiting, admission.active) == (0, 0, 0)


def test_waiting_clients_give_way_oldest_first() -> None:
    admission, evicted, reasons = _admission(max_waiting_clients=2)
    tickets = [_connect(admission, f"10.0.0.{i}", f"w{i}", evicted) for i in range(3)]
    for ticket in tickets:
        assert admission.welcome(ticket) is None
    assert admission.waiting == 2 and [e[0] for e in evicted] == ["w0"] and reasons == ["waiting_total"]


def test_draining_refuses_new_sessions() -> None:
    admission, evicted, _ = _admission()
    ticket = _connect(admission, "a", "a", evicted)
    admission.draining = True
    assert admission.load == 1.0
    refusal = admission.welcome(ticket)
    assert refusal is not None and refusal.code == "busy"


def test_token_throttle_backs_off_per_address() -> None:
    now = FakeTime()
    throttle = AuthThrottle(free_failures=3, first_backoff_s=1.0, max_backoff_s=8.0, now=now)
    for _ in range(3):
        throttle.failed("1.1.1.1")
        assert throttle.retry_after_s("1.1.1.1") == 0.0  # free failures
    expected = [1.0, 2.0, 4.0, 8.0, 8.0]
    for backoff in expected:
        throttle.failed("1.1.1.1")
        assert throttle.retry_after_s("1.1.1.1") == pytest.approx(backoff)
        assert throttle.retry_after_s("2.2.2.2") == 0.0  # other addresses are never slowed
    now.t += 8.5
    assert throttle.retry_after_s("1.1.1.1") == 0.0
    throttle.succeeded("1.1.1.1")
    throttle.failed("1.1.1.1")
    assert throttle.retry_after_s("1.1.1.1") == 0.0  # a success forgives


def test_token_throttle_forgets_and_stays_bounded() -> None:
    now = FakeTime()
    throttle = AuthThrottle(free_failures=0, forget_after_s=60.0, max_addresses=100, now=now)
    throttle.failed("1.1.1.1")
    assert throttle.retry_after_s("1.1.1.1") > 0
    now.t += 61.0
    assert throttle.retry_after_s("1.1.1.1") == 0.0 and len(throttle) == 0
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
