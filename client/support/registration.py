"""The client side of registration: certify the card's (or token's) key at the semper CA.

Order matters, so that every failure leaves nothing half-done:

1. check the registration key's form and read the device's public key (no key: stop);
2. ask the CA for its root and compare it with the pinned one (unreachable or wrong CA: stop,
   before a PIN try is spent);
3. verify the PIN, sign the PKCS#10 request on the device, MAC it with the registration key;
4. send it; the CA burns the registration key only when it issues;
5. check what came back (signed by the pinned root, for this key, this name, the role's key usage)
   before anything is written; keep a copy under ``$SEMPER_HOME/certificates``; then write it to
   the card (PIV slot 9C) or token and read it back.

If writing fails after the CA issued, running the same command again is safe: the CA hands the
same certificate to the holder of the same key (``repeated``), and the copy on disk remains.
"""
from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from semper.hardware import errors as hw
from semper.hardware.errors import SemperError
from semper.hardware.signer import Signer

from . import pki, regkeys
from .channels import ChannelError, JsonClient
from .paths import semper_home


class RegistrationError(SemperError):
    """Registration stopped; the message says why and what to do. Nothing was left half-done."""

    http_status = 422
    code = "registration_failed"


@dataclass(frozen=True)
class Registered:
    serial: str
    certificate: bytes          # DER
    saved_to: Path
    repeated: bool


def _root_der(root_pem: str) -> bytes:
    try:
        return x509.load_pem_x509_certificate(root_pem.encode()).public_bytes(Encoding.DER)
    except ValueError:
        raise RegistrationError("the CA root given is not a PEM certificate") from None


def device_point(signer: Signer) -> bytes:
    """The device's public key, or a clear error when it has none."""
    try:
        return signer.public_point()
    except hw.NotFoundError:
        raise RegistrationError(f"{signer.label} has no signature key (nothing in its signature slot); "
                                f"personalise it first ('semper card new' or 'semper token init')") from None


def check_issued(der: bytes, root_der: bytes, point: bytes, name: str, email: str | None) -> x509.Certificate:
    """What the CA sent must chain to the pinned root and name this key and person, for signing."""
    try:
        cert = x509.load_der_x509_certificate(der)
        root = x509.load_der_x509_certificate(root_der)
        cert.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise RegistrationError(f"the CA's answer is not a certificate from the pinned root ({e}); nothing was "
                                f"written") from None
    if pki.point_of(cert) != point:
        raise RegistrationError("the CA issued a certificate for another key; nothing was written")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [name]:
        raise RegistrationError(f"the certificate names {cns!r}, not {name!r}; nothing was written")
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    if not (ku.critical and ku.value.digital_signature and
            (ku.value.content_commitment or ExtendedKeyUsageOID.SERVER_AUTH in eku)):
        raise RegistrationError("the certificate lacks the key usage for signatures; nothing was written")
    return cert


def register(signer: Signer, *, pin: bytes | None, client: JsonClient, root_pem: str, registration_key: str,
             name: str, email: str | None, write: Callable[[bytes], None],
             read_back: Callable[[], bytes] | None = None, save_dir: Path | None = None) -> Registered:
    """Run the registration protocol for ``signer``'s key; ``write`` stores the certificate on the device.

    ``pin`` None: the signer gets the PIN verified itself right before it signs (the TINGUIN's
    ``GatedSigner``), so the PIN never passes through here.
    """
    try:
        key = regkeys.parse_key(registration_key)
    except regkeys.RegistrationKeyError as e:
        raise RegistrationError(f"{e}; nothing was sent") from None
    point = device_point(signer)
    root_der = _root_der(root_pem)
    try:
        served = client.get("/ca").get("certificate", "")
    except ChannelError as e:
        raise RegistrationError(f"{e} (nothing was sent; the card is unchanged)") from None
    if _root_der(str(served)) != root_der:
        raise RegistrationError(f"the CA at {client.base_url} has another root than the pinned one; "
                                f"check --ca and --ca-root. Nothing was sent")
    if pin is not None:
        signer.verify_pin(pin)
    try:
        csr = pki.build_csr(signer, point, name, email)
    except pki.PkiError:
        raise RegistrationError(f"{signer.label}'s key does not match its public key / certificate; the key in "
                                f"the signature slot was replaced? Nothing was sent") from None
    reg_id = regkeys.registration_id(key)
    mac = regkeys.request_mac(regkeys.mac_key(key), reg_id, csr)
    try:
        answer = client.post("/register", {"registration_id": reg_id, "csr": base64.b64encode(csr).decode(),
                                           "mac": base64.b64encode(mac).decode()})
    except ChannelError as e:
        raise RegistrationError(f"{e} (no certificate was written)") from None
    try:
        der = x509.load_pem_x509_certificate(str(answer["certificate"]).encode()).public_bytes(
            Encoding.DER)
        serial = str(answer["serial"])
    except (KeyError, ValueError):
        raise RegistrationError("the CA's answer holds no readable certificate; nothing was written") from None
    check_issued(der, root_der, point, name, email)
    folder = save_dir or semper_home() / "certificates"
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / f"{serial}.pem"
    saved.write_text(pki.pem(der))
    try:
        write(der)
        if read_back is not None and read_back() != der:
            raise RegistrationError("the certificate read back from the device differs from the one written")
    except (hw.HardwareError, RegistrationError) as e:
        raise RegistrationError(f"the CA issued certificate {serial} (saved in {saved}) but writing it failed: "
                                f"{e}. Run the same command again: the CA hands the same certificate to this "
                                f"key") from None
    return Registered(serial, der, saved, bool(answer.get("repeated", False)))
