"""The server side of NTLM (MS-NLMP) for the fake Exchange: a CHALLENGE message for the
client's NEGOTIATE, and verification of its AUTHENTICATE (NTLMv2: NTProofStr recomputed from
the password), so a wrong password really fails. HTTP NTLM authenticates a connection; the
fake remembers authenticated connections."""

from __future__ import annotations

import hmac
import os
import struct
import time

from spnego._ntlm_raw.crypto import ntowfv2

SIGNATURE = b"NTLMSSP\x00"
FLAGS = (
    0x00000001
    | 0x00000004
    | 0x00000200
    | 0x00008000
    | 0x00010000
    | 0x00080000
    | 0x00800000
    | 0x02000000
    | 0x20000000
    | 0x40000000
    | 0x80000000
)


def _av(av_id: int, value: bytes) -> bytes:
    return struct.pack("<HH", av_id, len(value)) + value


def challenge_message(server_challenge: bytes, domain: str = "CONTOSO") -> bytes:
    target = domain.encode("utf-16-le")
    filetime = int((time.time() + 11644473600) * 10_000_000)
    info = (
        _av(2, target)
        + _av(1, "EXCH01".encode("utf-16-le"))
        + _av(7, struct.pack("<Q", filetime))
        + _av(0, b"")
    )
    header_len = 56
    return (
        SIGNATURE
        + struct.pack("<I", 2)
        + struct.pack("<HHI", len(target), len(target), header_len)
        + struct.pack("<I", FLAGS)
        + server_challenge
        + b"\x00" * 8
        + struct.pack("<HHI", len(info), len(info), header_len + len(target))
        + b"\x0a\x00\x63\x45\x00\x00\x00\x0f"  # version 10.0.17763, NTLM revision 15
        + target
        + info
    )


def message_type(data: bytes) -> int:
    if len(data) < 12 or not data.startswith(SIGNATURE):
        return 0
    return int(struct.unpack("<I", data[8:12])[0])


def _field(data: bytes, offset: int) -> bytes:
    length, _, start = struct.unpack("<HHI", data[offset : offset + 8])
    return data[start : start + length]


def verify_authenticate(data: bytes, server_challenge: bytes, password: str) -> str | None:
    """The authenticated user (DOMAIN\\user) when the NTLMv2 response proves the password."""
    if message_type(data) != 3:
        return None
    nt_response = _field(data, 20)
    domain = _field(data, 28).decode("utf-16-le")
    user = _field(data, 36).decode("utf-16-le")
    if len(nt_response) < 24:
        return None  # NTLMv1 is not accepted
    proof, blob = nt_response[:16], nt_response[16:]
    key = ntowfv2(user, ntowfv2_nt_hash(password), domain)
    expected = hmac.new(key, server_challenge + blob, "md5").digest()
    return f"{domain}\\{user}" if hmac.compare_digest(proof, expected) else None


def ntowfv2_nt_hash(password: str) -> bytes:
    from spnego._ntlm_raw.md4 import md4

    return md4(password.encode("utf-16-le"))


def new_challenge() -> bytes:
    return os.urandom(8)
