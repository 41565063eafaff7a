"""What the invisible watermark carries: 64 bits = service id (16) + session number (32) + CRC-16.

The service id tells which deployment made a video (config `[disclosure] service_id`); the session
number tells which live session or render (logged by the server beside the session id). The CRC
tells a decoded payload from noise: a frame without a watermark, or with too little of it left,
decodes to bits whose CRC fails (1 in 65536 passes by chance).
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass

import numpy as np

SERVICE_BITS = 16
SESSION_BITS = 32
CRC_BITS = 16
PAYLOAD_BITS = SERVICE_BITS + SESSION_BITS + CRC_BITS


@dataclass(frozen=True)
class Payload:
    service_id: int  # 0..65535
    session: int  # 0..2**32-1

    def __post_init__(self) -> None:
        if not 0 <= self.service_id < 1 << SERVICE_BITS:
            raise ValueError(f"service_id {self.service_id} is not in 0..65535")
        if not 0 <= self.session < 1 << SESSION_BITS:
            raise ValueError(f"session {self.session} is not a 32-bit number")

    def _data(self) -> bytes:
        return self.service_id.to_bytes(2, "big") + self.session.to_bytes(4, "big")

    def bits(self) -> np.ndarray:
        """The 64 coded bits, most significant first, as a uint8 array of 0 and 1."""
        data = self._data()
        crc = binascii.crc_hqx(data, 0xFFFF)
        return np.unpackbits(np.frombuffer(data + crc.to_bytes(2, "big"), dtype=np.uint8))

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Payload | None:
        """The payload these 64 bits code, or None when their CRC does not match."""
        raw = np.packbits(np.asarray(bits, dtype=np.uint8)[:PAYLOAD_BITS]).tobytes()
        if len(raw) != PAYLOAD_BITS // 8:
            return None
        data, crc = raw[:6], int.from_bytes(raw[6:], "big")
        if binascii.crc_hqx(data, 0xFFFF) != crc:
            return None
        return cls(int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big"))

    def as_dict(self) -> dict[str, int | str]:
        return {"service_id": self.service_id, "session": self.session, "session_hex": f"{self.session:08x}"}


def session_number(session_id: str) -> int:
    """The 32-bit number a session's watermark carries, derived from its id (logged with it)."""
    return int.from_bytes(hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()[:4], "big")
