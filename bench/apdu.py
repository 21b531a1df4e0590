"""``semper bench apdu``: a short APDU in process and through pcscd, a purchase, PIV signatures.

The short APDU is READ PURSE (80 50 00 00 00, about 40 bytes back): it touches the applet but
writes nothing, so the figure is transport plus dispatch, not storage.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import card_pair, machine, stats_us

if TYPE_CHECKING:
    from semper.hardware.transport import Connection

READ_PURSE = bytes.fromhex("8050000000")
TARGET_MEDIAN_US = 300.0


def _time_transmit(transmit: Callable[[bytes], Any], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        r = transmit(READ_PURSE)
        out.append(time.perf_counter() - t)
        if r[-2:] != b"\x90\x00":
            raise RuntimeError(f"unexpected answer {r.hex()}")
    return out


def bench_apdu(count: int = 2000, purchases: int = 50, progress: bool = True) -> dict[str, object]:
    from semper.client.payment import card_purse
    from semper.hardware.pcscd import VirtualCards
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hardware.simulator import open_card
    from semper.hardware.transport import PcscConnection
    if count < 10:
        raise ValueError("--count must be at least 10")

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    result: dict[str, Any] = {"machine": machine(), "apdu": "READ PURSE 80 50 00 00 00",
                                 "target_pcscd_median_us": TARGET_MEDIAN_US}
    with card_pair(sync=True) as pair:
        say(f"in process: {count} APDUs")
        with open_card(pair.buyer) as conn:
            PurseSession(conn)
            inproc = stats_us(_time_transmit(conn.transmit, count))
        result["in_process"] = inproc
        say(f"through pcscd: {count} APDUs")
        with VirtualCards([pair.buyer, pair.psam]) as vc:
            with PcscConnection(vc.readers[0]) as c1, PcscConnection(vc.readers[1]) as c2:
                purse, psam = PurseSession(c1), PsamSession(c2)
                _time_transmit(c1.transmit, min(100, count))                     # warm-up
                via = stats_us(_time_transmit(c1.transmit, count))
                result["pcscd"] = via
                say(f"through pcscd: {purchases} purchases")
                card_purse.load(purse, pair.scheme, 10_000_00, b"1234")
                times = []
                for _ in range(purchases):
                    t = time.perf_counter()
                    card_purse.purchase(purse, psam, 1, pair.scheme.root_cert)
                    times.append(time.perf_counter() - t)
                result["purchase_pcscd"] = stats_us(times)
                say(f"through pcscd: {purchases} PIV signatures")
                result.update(_piv_signatures(c1, purchases))
    raw = _raw_signatures(max(purchases, 200))
    result["raw_cryptography_sign"] = raw
    result["piv_sign_over_raw"] = round(result["piv_sign_9a_pcscd"]["median_us"] / raw["median_us"], 1)
    result["pcscd_over_in_process"] = round(via["median_us"] / max(inproc["median_us"], 0.1), 1)
    result["meets_target"] = via["median_us"] < TARGET_MEDIAN_US
    return result


def _piv_signatures(connection: Connection, count: int) -> dict[str, object]:
    """9A (PIN once): one GENERAL AUTHENTICATE; 9C (PIN always): VERIFY + GENERAL AUTHENTICATE."""
    import hashlib

    from semper.hardware.piv import PivSession, Slot
    piv = PivSession(connection)
    digest = hashlib.sha256(b"semper bench").digest()
    piv.verify_pin(b"1234")
    t9a, t9c = [], []
    for _ in range(count):
        t = time.perf_counter()
        piv.sign_digest(Slot.AUTHENTICATION, digest)
        t9a.append(time.perf_counter() - t)
        t = time.perf_counter()
        piv.verify_pin(b"1234")
        piv.sign_digest(Slot.SIGNATURE, digest)
        t9c.append(time.perf_counter() - t)
    return {"piv_sign_9a_pcscd": stats_us(t9a), "piv_verify_and_sign_9c_pcscd": stats_us(t9c)}


def _raw_signatures(count: int) -> dict[str, float]:
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"semper bench").digest()
    out = []
    for _ in range(count):
        t = time.perf_counter()
        key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        out.append(time.perf_counter() - t)
    return stats_us(out)
