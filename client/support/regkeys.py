"""One-time registration keys, as handed out in the SEMPER trials, and the MAC they key.

A registration key is 20 random bytes shown once as 32 base32 letters in groups of four
(``ABCD-EFGH-...``): easy to read out over the phone or print in a letter. Two values are derived
from it, each a hash with its own label:

* the *registration id*, sent in clear so the CA can find the registration;
* the *MAC key*, with which the client authenticates its certification request (HMAC-SHA256).

The CA stores both derived values, never the key itself, and forgets the MAC key once the
registration is used. Why derived rather than the key: the letters a person was given cannot be
recovered from the CA's database, and a leaked database holds MAC keys only for registrations
that are still open.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from semper.hardware.errors import SemperError

KEY_BYTES = 20
MAC_LABEL = b"semper registration v1\x00"


class RegistrationKeyError(SemperError, ValueError):
    """The text given is not a registration key (wrong length or letters): the user's input, exit 2."""

    exit_status = 2
    http_status = 400
    code = "bad_registration_key"


def new_key() -> str:
    raw = base64.b32encode(secrets.token_bytes(KEY_BYTES)).decode()
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def parse_key(text: str) -> bytes:
    """The key's 20 bytes; dashes, blanks and case do not matter, typos do (one clear error)."""
    cleaned = "".join(text.split()).replace("-", "").upper()
    if len(cleaned) != 32:
        raise RegistrationKeyError(f"a registration key has 32 letters and digits (groups of four); got {len(cleaned)}")
    try:
        raw = base64.b32decode(cleaned)
    except ValueError:
        raise RegistrationKeyError("a registration key uses only the letters A-Z and the digits 2-7") from None
    return raw


def registration_id(key: bytes) -> str:
    return hashlib.sha256(b"semper registration id\x00" + key).hexdigest()[:32]


def mac_key(key: bytes) -> bytes:
    return hashlib.sha256(b"semper registration mac\x00" + key).digest()


def request_mac(mac_key_: bytes, reg_id: str, csr_der: bytes) -> bytes:
    """HMAC-SHA256 over a label, the registration id and the request: binds the key to this CSR."""
    return hmac.new(mac_key_, MAC_LABEL + reg_id.encode() + b"\x00" + csr_der, hashlib.sha256).digest()


def check_mac(mac_key_: bytes, reg_id: str, csr_der: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(request_mac(mac_key_, reg_id, csr_der), mac)
