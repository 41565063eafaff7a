"""Mutated SDP offers for fuzzing `signaling.peer.Peer.negotiate`: deterministic for a seed.

The starting points are real offers an aiortc client makes at test time (`base_offers`): sendrecv
audio + recvonly video, and sendonly audio + recvonly video, gathered on 127.0.0.1 only. Each mutated
offer applies one to three mutations (`MUTATIONS`) chosen by a seeded `random.Random`, so a seed
and a list of bases always give the same offers in the same order; each comes with a description
that says what was done (enough to rebuild it by hand).

Network safety: a mutated offer can only point the server at 127.0.0.1 (any port) or at an
address that is not a usable IP address at all. Numbers inside dotted addresses are never
replaced, and a changed candidate address is always either 127.0.0.1 or an impossible one, so
ICE checks that the server starts for an offer it accepts stay on loopback.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Callable, Iterator, Sequence

# Values a number in the offer is replaced with: edges of the 8/16/32/64-bit ranges, negative,
# digit strings far too long for any field, and digits int() reads that are not ASCII.
NUMBERS = (
    "0",
    "-1",
    "1",
    "127",
    "128",
    "255",
    "256",
    "65535",
    "65536",
    "70000",
    str(2**31),
    str(2**32),
    str(2**32 - 1),
    str(2**64),
    "9" * 40,
    "9" * 5000,
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() accepts it
    "\uff16\uff15\uff15\uff13\uff16",  # fullwidth 65536
    "1e9",
    "0x10",
    "",
)

GARBAGE = (
    "\x00",
    "\x00\x01\x02\x7f",
    "\r",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\ud800",
    "\udfff",
    "\ud83d",  # half of an emoji
    "\U0001f600",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\ufeff",
    "\u0301\u0301\u0301",
    "\u00e9",
    "\uffff",
    "%s%n%x",
    "{}{0}",
    "\\",
    "a=",
    "m=",
    "m=audio",
    "a=candidate:",
    "=",
    ":",
    "A" * 70000,
)

# Candidate addresses a mutation may put in: 127.0.0.1 or addresses that cannot be reached.
ADDRESSES = (
    "127.0.0.1",
    "999.1.1.1",
    "127.0.0.256",
    "127.0.0",
    "127.0.0.1.",
    "",
    "0.0.0.0",
    "::",
    "255.255.255.255",
    "224.0.0.1",
    "ff02::1",
    "localhost",
    "host.invalid",
    "\ud800",
    "127.0.0.1\x00",
    ":::1",
    "1" * 300,
)

TRANSPORTS = ("tcp", "TCP", "UDP", "sctp", "tls", "", "u\u0064p\u0301", "\ud800", "x" * 1000)
CANDIDATE_TYPES = ("host", "srflx", "relay", "prflx", "", "hostx", "\ud800")
SETUP_VALUES = ("active", "passive", "actpass", "holdconn", "", "ACTPASS", "actpass active", "\ud800")
PROFILES = ("RTP/AVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/DTLS/RTP/SAVPF", "DTLS/SCTP", "", "udp/tls/rtp/savpf", "X")
KINDS = ("audio", "video", "application", "text", "message", "", "AUDIO")
FINGERPRINT_ALGORITHMS = ("md5", "sha-1", "sha-999", "SHA-256", "", "sha-256 sha-256", "\ud800")
ICE_VALUES = (
    "",
    "a",
    "abc",
    "a b",
    "\u00fc\u00fc\u00fc\u00fc",
    "\ud800\ud800\ud800\ud800",
    "x" * 257,
    "y" * 100000,
    ":::::",
)
MID_VALUES = ("", "0", "1", "2", " ", "0 1", "x" * 10000, "\ud800", "\u00e9", "-1", "a:b")
CODEC_NAMES = ("opus", "OPUS", "VP8", "H264", "rtx", "red", "ulpfec", "", "x", "\ud800", "opus/48000")

_NUMBER = re.compile(r"(?<![\w.:-])-?\d+(?![\w.])|(?<=:)\d+(?![\w.])")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


# --- base offers ---------------------------------------------------------------------------------


async def base_offers() -> list[tuple[str, str]]:
    """Real offers from an aiortc client, gathered on 127.0.0.1 only: [(name, sdp)].

    The clients are closed before this returns, so nothing answers on their ports.
    """
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    from signaling.ice import host_addresses

    out = []
    with host_addresses(["127.0.0.1"]):
        for audio in ("sendrecv", "sendonly"):
            pc = RTCPeerConnection()
            try:
                pc.addTransceiver(AudioStreamTrack(), direction=audio)
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                out.append((f"{audio} audio + recvonly video", pc.localDescription.sdp))
            finally:
                await pc.close()
    return out


def base_offers_sync() -> list[tuple[str, str]]:
    """`base_offers` from synchronous code, also while an event loop runs (in a thread of its own)."""
    result: list[list[tuple[str, str]]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(base_offers()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="base-offers")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


# --- helpers -------------------------------------------------------------------------------------


def _lines(sdp: str) -> list[str]:
    return sdp.split("\r\n")[:-1] if sdp.endswith("\r\n") else sdp.split("\r\n")


def _join(lines: Sequence[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def _indices(lines: Sequence[str], prefix: str) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith(prefix)]


def _sections(lines: Sequence[str]) -> list[tuple[int, int]]:
    """(first, end) line ranges of the media sections."""
    starts = _indices(lines, "m=")
    return [(s, starts[k + 1] if k + 1 < len(starts) else len(lines)) for k, s in enumerate(starts)]


def _short(text: str, limit: int = 24) -> str:
    shown = ascii(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}...({len(text)} chars)"


Mutation = Callable[[random.Random, list[str]], tuple[str, list[str]]]


def _set_field(line: str, index: int, value: str) -> str:
    """Replace the whitespace-separated field `index` of a line (the attribute name is field 0)."""
    fields = line.split(" ")
    if index < len(fields):
        fields[index] = value
    return " ".join(fields)


def _pick_line(rng: random.Random, lines: list[str], prefix: str) -> int | None:
    found = _indices(lines, prefix)
    return rng.choice(found) if found else None


# --- mutations: each returns (description, new lines) ----------------------------------------------


def delete_line(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = rng.randrange(len(lines))
    return f"delete line {i} {_short(lines[i], 40)}", lines[:i] + lines[i + 1 :]


def duplicate_line(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = rng.randrange(len(lines))
    times = rng.choice((1, 1, 2, 50))
    return f"duplicate line {i} {_short(lines[i], 40)} x{times}", lines[: i + 1] + [lines[i]] * times + lines[i + 1 :]


def swap_lines(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    out = list(lines)
    out[i], out[j] = out[j], out[i]
    return f"swap lines {i} and {j}", out


def replace_number(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    """Replace one number (never one inside a dotted IPv4 address) with an edge value."""
    choices = []
    for i, line in enumerate(lines):
        masked = _IPV4.sub(lambda m: "#" * len(m.group()), line)
        choices += [(i, m.start(), m.end()) for m in _NUMBER.finditer(masked)]
    if not choices:
        return "no number to replace", lines
    i, start, end = rng.choice(choices)
    value = rng.choice(NUMBERS)
    out = list(lines)
    out[i] = lines[i][:start] + value + lines[i][end:]
    return f"line {i} {_short(lines[i], 30)}: number {lines[i][start:end]} -> {_short(value)}", out


def insert_garbage(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = rng.randrange(len(lines))
    at = rng.randrange(len(lines[i]) + 1)
    garbage = (
        rng.choice(GARBAGE) if rng.random() < 0.7 else bytes(rng.randrange(256) for _ in range(8)).decode("latin-1")
    )
    out = list(lines)
    out[i] = lines[i][:at] + garbage + lines[i][at:]
    return f"line {i} {_short(lines[i], 30)}: insert {_short(garbage)} at {at}", out


def insert_garbage_line(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = rng.randrange(len(lines) + 1)
    line = rng.choice(("a=", "a=:", "m=", "c=", "=", "x", "a=ice-lite", "a=end-of-candidates", "b=AS:99999999999"))
    line += rng.choice(GARBAGE[:12])
    return f"insert line {_short(line)} at {i}", lines[:i] + [line] + lines[i:]


def change_mid(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=mid:")
    if not found:
        return "no a=mid", lines
    what = rng.choice(("remove one", "remove all", "same", "value", "value"))
    out = list(lines)
    if what == "remove one":
        i = rng.choice(found)
        return f"remove a=mid line {i}", out[:i] + out[i + 1 :]
    if what == "remove all":
        return "remove every a=mid", [line for line in out if not line.startswith("a=mid:")]
    if what == "same":
        for i in found:
            out[i] = "a=mid:0"
        return "every a=mid is 0 (duplicate mids)", out
    i, value = rng.choice(found), rng.choice(MID_VALUES)
    out[i] = "a=mid:" + value
    return f"a=mid line {i} -> {_short(value)}", out


def change_bundle(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = _pick_line(rng, lines, "a=group:")
    value = rng.choice(("BUNDLE", "BUNDLE 1 0", "BUNDLE 0", "BUNDLE 5 6", "BUNDLE 0 0", "LS 0 1", "", "BUNDLE \ud800"))
    out = list(lines)
    if i is None:
        return "no a=group", lines
    out[i] = "a=group:" + value
    return f"a=group -> {_short(value)}", out


def change_fingerprint(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=fingerprint:")
    if not found:
        return "no a=fingerprint", lines
    what = rng.choice(("remove all", "remove section", "algorithm", "value", "truncate", "extra"))
    out = list(lines)
    if what == "remove all":
        return "remove every a=fingerprint", [line for line in out if not line.startswith("a=fingerprint:")]
    if what == "remove section":
        first, end = rng.choice(_sections(lines))
        kept = [line for k, line in enumerate(out) if not (first <= k < end and line.startswith("a=fingerprint:"))]
        return f"remove the a=fingerprint lines of section at line {first}", kept
    i = rng.choice(found)
    algorithm, _, value = lines[i][len("a=fingerprint:") :].partition(" ")
    if what == "algorithm":
        algorithm = rng.choice(FINGERPRINT_ALGORITHMS)
    elif what == "value":
        value = rng.choice(("", "zz:zz", "00", "00:" * 31 + "00", "\ud800", "G" * 200, "0" * 100000))
    elif what == "truncate":
        value = value[: rng.randrange(len(value) + 1)]
    else:
        value += " " + rng.choice(("extra", "\ud800", "1 2 3"))
    out[i] = f"a=fingerprint:{algorithm} {value}"
    return f"fingerprint line {i} ({what}) -> {_short(out[i], 50)}", out


def change_ice_credentials(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    attribute = rng.choice(("a=ice-ufrag:", "a=ice-pwd:"))
    found = _indices(lines, attribute)
    if not found:
        return f"no {attribute}", lines
    out = list(lines)
    what = rng.choice(("remove one", "remove all", "value", "value", "differ"))
    if what == "remove one":
        i = rng.choice(found)
        return f"remove {attribute} line {i}", out[:i] + out[i + 1 :]
    if what == "remove all":
        return f"remove every {attribute}", [line for line in out if not line.startswith(attribute)]
    i = rng.choice(found)
    if what == "differ":
        value = "zzzzzzzzzzzzzzzzzzzzzzzzzz"[: len(lines[i]) - len(attribute)]
    else:
        value = rng.choice(ICE_VALUES)
    out[i] = attribute + value
    return f"{attribute} line {i} -> {_short(value)}", out


def change_setup(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=setup:")
    if not found:
        return "no a=setup", lines
    out = list(lines)
    if rng.random() < 0.25:
        return "remove every a=setup", [line for line in out if not line.startswith("a=setup:")]
    value = rng.choice(SETUP_VALUES)
    for i in found if rng.random() < 0.5 else [rng.choice(found)]:
        out[i] = "a=setup:" + value
    return f"a=setup -> {_short(value)}", out


def change_rtpmap(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=rtpmap:")
    if not found:
        return "no a=rtpmap", lines
    out = list(lines)
    i = rng.choice(found)
    pt, _, desc = lines[i][len("a=rtpmap:") :].partition(" ")
    bits = desc.split("/")
    what = rng.choice(
        ("remove", "pt", "rate", "name", "channels", "slashes", "many", "duplicate pt", "fmtp", "rtcp-fb")
    )
    if what == "remove":
        return f"remove rtpmap line {i}", out[:i] + out[i + 1 :]
    if what == "pt":
        value = rng.choice(("0", "-1", "72", "127", "128", "255", "256", "96", "x", str(2**64)))
        out[i] = f"a=rtpmap:{value} {desc}"
    elif what == "rate":
        bits[1:2] = [rng.choice(("0", "-1", "1", str(2**32), "9" * 400, "x", ""))]
        out[i] = f"a=rtpmap:{pt} {'/'.join(bits)}"
    elif what == "name":
        bits[0] = rng.choice(CODEC_NAMES)
        out[i] = f"a=rtpmap:{pt} {'/'.join(bits)}"
    elif what == "channels":
        bits[2:] = [rng.choice(("0", "-1", "255", str(2**31), "9" * 400, "x", ""))]
        out[i] = f"a=rtpmap:{pt} {'/'.join(bits)}"
    elif what == "slashes":
        out[i] = f"a=rtpmap:{pt} {rng.choice(('', '/', 'opus', 'opus/', '//', 'opus/48000/2/1'))}"
    elif what == "many":
        count = rng.choice((100, 1000, 5000))
        first, end = next((s, e) for s, e in _sections(lines) if s <= i < e)
        extra = [f"a=rtpmap:{96 + k % 32} {desc}" for k in range(count)]
        out = out[:end] + extra + out[end:]
        out[first] = out[first] + " 96" * min(count, 3000)
        return f"{count} more rtpmap lines after section at line {first}", out
    elif what == "duplicate pt":
        out.insert(i + 1, f"a=rtpmap:{pt} {rng.choice(('VP8/90000', 'opus/48000/2', 'rtx/90000', 'PCMU/8000'))}")
    elif what == "fmtp":
        value = rng.choice(
            (
                "apt=x",
                "apt=999",
                "apt=-1",
                "apt=" + pt,
                "packetization-mode=x",
                "profile-level-id=zzzzzz",
                ";;;",
                "=",
                "",
            )
        )
        out.insert(i + 1, f"a=fmtp:{pt} {value}")
    else:
        value = rng.choice(("nack", "", "nack pli extra words", "\ud800", "x" * 5000))
        out.insert(i + 1, f"a=rtcp-fb:{rng.choice((pt, '*', 'x', '999'))} {value}")
    return f"rtpmap line {i} ({what}) -> {_short(out[i], 50)}", out


def change_candidate(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    """Change one field of a candidate: ports, addresses, transports, priorities, components, types."""
    found = _indices(lines, "a=candidate:")
    if not found:
        return "no a=candidate", lines
    out = list(lines)
    i = rng.choice(found)
    fields = lines[i].split(" ")  # a=candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE
    what = rng.choice(("port", "port", "address", "address", "transport", "priority", "component", "type", "fields"))
    if what == "port":
        fields[5] = rng.choice(("0", "-1", "65536", "65535", "70000", str(2**31), str(2**64), "9" * 400, "x", "9"))
    elif what == "address":
        fields[4] = rng.choice(ADDRESSES)
    elif what == "transport":
        fields[2] = rng.choice(TRANSPORTS)
    elif what == "priority":
        fields[3] = rng.choice(("0", "-1", str(2**31), str(2**32), str(2**32 - 1), str(2**64), "9" * 400, "x"))
    elif what == "component":
        fields[1] = rng.choice(("0", "2", "3", "256", "65536", "-1", str(2**64), "x"))
    elif what == "type":
        fields[7] = rng.choice(CANDIDATE_TYPES)
    else:
        extra = rng.choice(
            (
                [],
                ["raddr"],
                ["raddr", "999.1.1.1", "rport", "70000"],
                ["rport", "x"],
                ["tcptype", "active"],
                ["generation", "0", "network-id", "1"],
                ["x"] * 1000,
            )
        )
        fields = fields[: rng.choice((3, 5, 7, 8))] if not extra else fields + extra
    out[i] = " ".join(fields)
    return f"candidate line {i} ({what}) -> {_short(out[i], 60)}", out


def many_candidates(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=candidate:")
    if not found:
        return "no a=candidate", lines
    i = rng.choice(found)
    count = rng.choice((50, 200, 2000))
    fields = lines[i].split(" ")
    extra = []
    for k in range(count):
        fields[5] = str(20000 + k)  # all on 127.0.0.1
        extra.append(" ".join(fields))
    return f"{count} more candidates (127.0.0.1) after line {i}", lines[: i + 1] + extra + lines[i + 1 :]


def change_m_line(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "m=")
    i = rng.choice(found)
    out = list(lines)
    fields = lines[i][2:].split(" ")  # KIND PORT PROTO FMT...
    what = rng.choice(("port", "proto", "kind", "fmt", "fmt", "many sections"))
    if what == "port":
        fields[1] = rng.choice(("0", "-1", "65536", "9", str(2**64), "x", "9/2"))
    elif what == "proto":
        fields[2] = rng.choice(PROFILES)
    elif what == "kind":
        fields[0] = rng.choice(KINDS)
    elif what == "fmt":
        fields[3:] = rng.choice(
            ([], ["x"], ["256"], ["-1"], ["72"], ["96"] * 500, [str(k) for k in range(128)], ["96", "96"], [str(2**64)])
        )
    else:
        count = rng.choice((3, 50, 500))
        first, end = next((s, e) for s, e in _sections(lines) if s == i)
        section = lines[first:end]
        out = lines[:end] + section * count + lines[end:]
        return f"section at line {i} repeated {count} more times", out
    out[i] = "m=" + " ".join(fields)
    return f"m= line {i} ({what}) -> {_short(out[i], 60)}", out


def change_ssrc(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=ssrc")
    if not found:
        return "no a=ssrc", lines
    out = list(lines)
    i = rng.choice(found)
    value = rng.choice(("0", "-1", str(2**32), str(2**32 - 1), str(2**64), "9" * 400, "x", ""))
    if lines[i].startswith("a=ssrc-group:"):
        out[i] = rng.choice(
            (f"a=ssrc-group:FID {value}", f"a=ssrc-group:FID {value} {value}", "a=ssrc-group:", "a=ssrc-group:SIM")
        )
    elif rng.random() < 0.2:
        count = rng.choice((1000, 10000))
        extra = [f"a=ssrc:{k + 1} cname:x" for k in range(count)]
        return f"{count} more a=ssrc lines after line {i}", out[: i + 1] + extra + out[i + 1 :]
    else:
        _, _, rest = lines[i].partition(" ")
        out[i] = f"a=ssrc:{value} {rest}" if rng.random() < 0.8 else f"a=ssrc:{value}"
    return f"ssrc line {i} -> {_short(out[i], 50)}", out


def change_extmap(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = _pick_line(rng, lines, "a=extmap:")
    if i is None:
        return "no a=extmap", lines
    out = list(lines)
    _, _, uri = lines[i].partition(" ")
    ext_id = rng.choice(("0", "15", "16", "255", "256", "4096", "-1", str(2**64), "x", "1/sendrecv", "1/a/b", "2"))
    out[i] = f"a=extmap:{ext_id} {rng.choice((uri, uri, '', 'x', uri + ' extra'))}"
    return f"extmap line {i} -> {_short(out[i], 50)}", out


def change_direction(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    out = list(lines)
    first, end = rng.choice(_sections(lines))
    direction = rng.choice(("inactive", "sendonly", "recvonly", "sendrecv"))
    if rng.random() < 0.5:
        out.insert(first + 1, "a=" + direction)  # a second direction attribute
        return f"add a={direction} to section at line {first}", out
    for k in range(first, end):
        if out[k] in ("a=inactive", "a=sendonly", "a=recvonly", "a=sendrecv"):
            out[k] = "a=" + direction
    return f"section at line {first} direction -> {direction}", out


def remove_rtcp_mux(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    found = _indices(lines, "a=rtcp-mux")
    if not found:
        return "no a=rtcp-mux", lines
    i = rng.choice(found)
    return f"remove a=rtcp-mux line {i}", lines[:i] + lines[i + 1 :]


def session_attribute(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    """Add an attribute at session level (before the first m= line)."""
    first = _indices(lines, "m=")[0]
    line = rng.choice(
        (
            "a=ice-lite",
            "a=setup:active",
            "a=setup:holdconn",
            "a=fingerprint:sha-256 00",
            "a=ice-ufrag:\ud800\ud800\ud800\ud800",
            "a=ice-pwd:",
            "a=group:BUNDLE 0 1 2",
            "a=msid-semantic:",
            "c=IN IP4 999.1.1.1",
            "c=garbage",
            "v=x",
            "v=" + "9" * 5000,
        )
    )
    return f"session-level {_short(line)}", lines[:first] + [line] + lines[first:]


def long_line(rng: random.Random, lines: list[str]) -> tuple[str, list[str]]:
    i = rng.randrange(len(lines))
    size = rng.choice((10_000, 100_000, 300_000))
    out = list(lines)
    out[i] += "x" * size
    return f"line {i} {_short(lines[i], 30)} made {size} chars longer", out


MUTATIONS: tuple[Mutation, ...] = (
    delete_line,
    delete_line,
    duplicate_line,
    swap_lines,
    replace_number,
    replace_number,
    replace_number,
    insert_garbage,
    insert_garbage,
    insert_garbage_line,
    change_mid,
    change_mid,
    change_bundle,
    change_fingerprint,
    change_ice_credentials,
    change_ice_credentials,
    change_setup,
    change_rtpmap,
    change_rtpmap,
    change_candidate,
    change_candidate,
    change_candidate,
    many_candidates,
    change_m_line,
    change_m_line,
    change_ssrc,
    change_extmap,
    change_direction,
    remove_rtcp_mux,
    session_attribute,
    long_line,
)


def _text_mutation(rng: random.Random, sdp: str) -> tuple[str, str]:
    """Mutations of the whole text: truncation and line endings."""
    what = rng.choice(("truncate", "truncate", "newlines", "cr", "bom", "strip"))
    if what == "truncate":
        at = rng.randrange(len(sdp))
        return f"truncate at {at} of {len(sdp)}", sdp[:at]
    if what == "newlines":
        return "LF line endings", sdp.replace("\r\n", "\n")
    if what == "cr":
        return "CR line endings", sdp.replace("\r\n", "\r")
    if what == "bom":
        return "byte-order mark first", "\ufeff" + sdp
    return "no final CRLF", sdp.rstrip("\r\n")


def mutate(rng: random.Random, sdp: str) -> tuple[str, str]:
    """One to three mutations of `sdp`, chosen by `rng`: (description, mutated sdp)."""
    steps = []
    lines = _lines(sdp)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not lines:
            break
        description, lines = rng.choice(MUTATIONS)(rng, lines)
        steps.append(description)
    out = _join(lines)
    if rng.random() < 0.1:
        description, out = _text_mutation(rng, out)
        steps.append(description)
    return "; ".join(steps), out


def mutated_offers(n: int, seed: int, bases: Sequence[tuple[str, str]] | None = None) -> Iterator[tuple[str, str]]:
    """`n` mutated offers, the same ones for the same seed and bases: (description, sdp) pairs.

    `bases` defaults to fresh `base_offers_sync()` (real aiortc offers on 127.0.0.1).
    """
    if bases is None:
        bases = base_offers_sync()
    rng = random.Random(seed)
    for k in range(n):
        name, sdp = bases[k % len(bases)]
        description, mutated = mutate(rng, sdp)
        yield f"#{k} [{name}] {description}", mutated
