"""``semper bench sign``: one ECDSA P-256 signature over a SHA-256 digest, on each kind of signer.

- raw ``cryptography`` in process: the floor, what the arithmetic costs;
- SoftHSM2 through PKCS#11 (``Pkcs11Signer``): what a software token adds (C_SignInit + C_Sign,
  r||s to DER);
- the simulated PIV card through pcscd: key 9A with ``PivSigner`` (one GENERAL AUTHENTICATE APDU),
  9A with ``Pkcs11Signer`` over OpenSC's ``opensc-pkcs11.so`` (the same APDU behind OpenSC), and
  9C over OpenSC, which needs the PIN for every signature (VERIFY + GENERAL AUTHENTICATE, and
  OpenSC's context-specific login).

Everything (token folder, card image, scheme keys) lives in a temporary folder. The PIN is verified
once before the timed loop except for 9C, where it is part of every signature by design. The first
signature of each kind is verified against the key's public point, so a fast wrong answer cannot
pass for a figure.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .common import SCHEME_PIN, machine, stats_us

PIN = b"246810"
SO_PIN = b"13572468"
DIGEST = hashlib.sha256(b"semper bench sign: 1 bicycle, 250.00 EUR").digest()


def _time(sign: Callable[[], bytes], count: int) -> tuple[dict[str, float], bytes]:
    """Statistics of ``count`` calls, signatures per second over the whole loop, and one signature."""
    first = sign()
    samples = []
    start = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        sign()
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    out = stats_us(samples)
    out["signatures_per_s"] = round(count / total, 1)
    return out, first


def _check(signature: bytes, point: bytes) -> bool:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).verify(
        signature, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    return True


def _raw(count: int) -> dict[str, object]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    key = ec.generate_private_key(ec.SECP256R1())
    stats, sig = _time(lambda: key.sign(DIGEST, ec.ECDSA(Prehashed(hashes.SHA256()))), count)
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {**stats, "verified": _check(sig, point)}


def _softhsm(folder: Path, count: int) -> dict[str, object]:
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import SoftHsmStore, provision
    store = SoftHsmStore.in_folder(folder / "softhsm")
    made = provision(store, "semper bench", PIN, SO_PIN)
    with Pkcs11Signer.open("semper bench", softhsm_conf=store.conf) as signer:
        signer.verify_pin(PIN)
        stats, sig = _time(lambda: signer.sign_digest(DIGEST), count)
        return {**stats, "verified": _check(sig, made.public_point), "module": made.module}


def _card(folder: Path, count: int, say: Callable[[str], None]) -> dict[str, object]:
    from semper.client.support.personalisation import CardProfile, personalise_purse_card
    from semper.client.support.scheme import Scheme
    from semper.hardware.pcscd import VirtualCards
    from semper.hardware.piv import PivSession, PivSigner, Slot
    from semper.hardware.transport import PcscConnection
    from semper.hsm.module import OPENSC_MODULE, load
    from semper.hsm.signer import Pkcs11Signer

    image = folder / "card"
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        issued = personalise_purse_card(image, scheme, CardProfile(PIN, b"12345678"), sync=False)
    label = f"semper card holder {issued.card_id}"
    out: dict[str, object] = {}
    say("waiting for pcscd (one per machine) and the simulated card")
    with VirtualCards([image], sync=False) as vc:
        say(f"card through pcscd, PivSigner 9A: {count} signatures")
        with PcscConnection(vc.readers[0]) as conn:
            piv = PivSigner(PivSession(conn), Slot.AUTHENTICATION)
            piv.verify_pin(PIN)
            stats, sig = _time(lambda: piv.sign_digest(DIGEST), count)
            out["card_piv_9a_pcscd"] = {**stats, "verified": _check(sig, piv.public_point())}
        module = load(OPENSC_MODULE)
        say(f"card through pcscd, Pkcs11Signer over OpenSC, 9A: {count} signatures")
        with Pkcs11Signer(module, label, b"\x01") as p11:
            p11.verify_pin(PIN)
            stats, sig = _time(lambda: p11.sign_digest(DIGEST), count)
            out["card_opensc_9a_pcscd"] = {**stats, "verified": _check(sig, p11.public_point())}
        say(f"card through pcscd, Pkcs11Signer over OpenSC, 9C with the PIN each time: {count} signatures")
        with Pkcs11Signer(module, label, b"\x02") as p11:
            def pin_and_sign() -> bytes:
                p11.verify_pin(PIN)
                return p11.sign_digest(DIGEST)
            stats, sig = _time(pin_and_sign, count)
            out["card_opensc_9c_pin_each_pcscd"] = {**stats, "verified": _check(sig, p11.public_point())}
    return out


def bench_sign(count: int = 1000, card: bool = True, progress: bool = True) -> dict[str, object]:
    """Figures for ``count`` signatures on each signer; ratios are each one's median over raw's."""
    if count < 1:
        raise ValueError("count must be positive")

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    result: dict[str, object] = {"machine": machine(), "count": count, "signature": "ECDSA P-256 over a SHA-256 "
                                 "digest computed on the host, DER"}
    say(f"raw cryptography: {count} signatures")
    result["raw_cryptography"] = raw = _raw(count)
    from semper.hardware.simulator import card_keys_in
    with tempfile.TemporaryDirectory(prefix="semper-bench-sign-") as d, card_keys_in(Path(d)):
        say(f"SoftHSM2 through PKCS#11: {count} signatures")
        result["softhsm_pkcs11"] = _softhsm(Path(d), count)
        if card:
            result.update(_card(Path(d), count, say))
    ratios: dict[str, dict[str, float]] = {}
    for name, figures in result.items():
        if isinstance(figures, dict) and "median_us" in figures and name != "raw_cryptography":
            ratios[name] = {"median_over_raw": round(figures["median_us"] / raw["median_us"], 1),
                            "raw_per_s_over_this": round(raw["signatures_per_s"] / figures["signatures_per_s"], 1)}
    result["ratios_to_raw"] = ratios
    return result
