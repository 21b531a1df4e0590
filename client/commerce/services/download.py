"""Downloading a shop's commerce service: fetch, check, show in the TINGUIN, remember the decision.

The order of the checks (:func:`.certificate.check`) names the first fault: no certificate
(``uncertified``), a signer that is not a certifier or not one the preferences trust
(``uncertified``/``untrusted``), a certificate outside its validity (``expired``), one on the
certifier's revocation list or a list that could not be had or is stale (``revoked``), a document
that is not the certified one (``tampered``), a document asking more than its certificate allows
(``over-reaching``). Each refusal is a :class:`~.permits.ServiceRefused` with that ``reason``,
raised before the TINGUIN shows anything of the service and before any deal starts: nothing is
ordered, signed or paid.

A service that passes is shown in the TINGUIN (:class:`client.tinguin.service_screen.ServiceScreen`)
with what its certificate allows; the user's answer is kept in the preferences under
``services.<certificate serial>`` (``allow``/``refuse``), so it is asked once per certificate.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from ...support import prefs
from ...support.channels import ChannelError, JsonClient
from ...support.trust import TrustStore
from ...tinguin.model import DealOutcome, OutcomeStatus
from ...tinguin.service_screen import ServiceView
from ..buyer import Buyer
from ..deal import deal_attributes
from ..errors import CommerceError, DealDeclined
from . import interpreter
from .certificate import CheckedService, check, refused
from .interpreter import Request
from .permits import ServiceRefused
from .run import DealResult

MAX_LIST = 4 * 1024 * 1024


@dataclass(frozen=True)
class Offered:
    """What the shop sent: the document as it wrote it, the certificate (or None)."""

    name: str
    document: dict[str, Any] | None
    certificate: bytes | None


def fetch(b: Buyer, name: str) -> Offered:
    answer = b.shop.get(f"/services/{name}")
    doc = answer.get("document")
    cert = answer.get("certificate")
    try:
        der = base64.b64decode(cert, validate=True) if isinstance(cert, str) else None
    except (binascii.Error, ValueError):
        raise refused("malformed", "the shop sent a certificate that is not base64") from None
    return Offered(name, doc if isinstance(doc, dict) else None, der)


def revocation_list(url: str, root_pem: str | bytes | Path, *, timeout: float = 10.0) -> bytes | None:
    """The certifier's signed list from the address its certificate names (None: could not be had)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    try:
        with JsonClient(base, root_pem, timeout=timeout, name="the certifier") as client:
            data = client.get_bytes(parts.path or "/revocations")
    except ChannelError:
        return None
    return data if len(data) <= MAX_LIST else None


def load_certifiers(path: str | Path | None) -> list[x509.Certificate]:
    if not path:
        return []
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise CommerceError(f"cannot read the trusted certifiers {path} (trust.certifiers): {e}") from None


class Decisions:
    """The user's decisions on services, in the preferences file (``services.<serial>``)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def get(self, serial: str) -> str | None:
        return prefs.load(self.path).get(prefs.service_key(serial))

    def set(self, serial: str, decision: str) -> None:
        prefs.set_value(prefs.service_key(serial), decision, self.path)


def view(checked: CheckedService, shop: str) -> ServiceView:
    d, p = checked.document, checked.permit
    return ServiceView(d.name, d.title, d.description, shop, checked.certifier_name, d.sha256,
                       checked.body.not_after, tuple(s.title for s in d.steps), tuple(p.lines()))


def obtain(b: Buyer, name: str, *, root_pem: str | bytes | Path, certifiers: Sequence[x509.Certificate],
           decisions: Decisions, crls: Sequence[bytes] = (), now: dt.datetime | None = None,
           lists: Callable[[str], bytes | None] | None = None) -> CheckedService:
    """Fetch the shop's service ``name``, check it, and have the user decide (once per certificate).
    ``crls``: the CA's CRLs (the certifier's own key may have been revoked); ``lists``: how to get a
    revocation list from its URL (default: over HTTPS, pinned to the CA root)."""
    offered = fetch(b, name)
    trust: TrustStore = b.trust.with_crls(crls) if crls else b.trust
    rl = None
    if offered.certificate is not None:
        url = _list_url(offered.certificate)
        rl = (lists or (lambda u: revocation_list(u, root_pem)))(url) if url else None
    checked = check(offered.document, offered.certificate, rl, trust=trust, certifiers=certifiers, now=now)
    if checked.document.name != name:
        raise refused("tampered", f"the shop sent the service {checked.document.name!r} when asked for {name!r}")
    serial = checked.body.serial
    before = decisions.get(serial)
    if before == "refuse":
        raise DealDeclined(f"you refused the service {name!r} (certificate {serial}) before; nothing was run "
                           f"(semper prefs unset {prefs.service_key(serial)} to be asked again)")
    if before != "allow":
        ask = getattr(b.ui, "review_service", None)
        if ask is None:
            raise refused("not-shown", "this TINGUIN cannot show a downloaded service, so none is run")
        allowed = bool(ask(view(checked, b.shop.url)))
        decisions.set(serial, "allow" if allowed else "refuse")
        if not allowed:
            raise DealDeclined(f"you refused the service {name!r}; nothing was ordered, signed or paid")
    return checked


def _list_url(der: bytes) -> str | None:
    """Where the certificate says the revocation list is (read before the certificate is checked, only to
    fetch the list; the check that follows covers the URL too, as part of the signed statement)."""
    from ...support.cms import EvidenceError, parse_statement
    try:
        url = parse_statement(der).body.get("revocations")
    except EvidenceError:
        return None
    return url if isinstance(url, str) and url.startswith("https://") else None


def run_downloaded(b: Buyer, name: str, request: Request, *, anonymous: bool = False,
                   root_pem: str | bytes | Path, certifiers: Sequence[x509.Certificate], decisions: Decisions,
                   crls: Sequence[bytes] = (), lists: Callable[[str], bytes | None] | None = None,
                   sleep: Callable[[float], None] | None = None) -> DealResult:
    """Download the shop's service ``name``, check it, let the user decide, and run it under its certificate.

    A refusal before the run (any failed check, the user's no) ends here, shown in the TINGUIN: no
    deal was started, nothing ordered, signed or paid."""
    try:
        checked = obtain(b, name, root_pem=root_pem, certifiers=certifiers, decisions=decisions, crls=crls,
                         lists=lists)
    except ServiceRefused as e:
        return _ended(b, name, OutcomeStatus.FAILED, f"refused ({e.reason}): {e}")
    except DealDeclined as e:
        return _ended(b, name, OutcomeStatus.CANCELLED, str(e))
    except CommerceError as e:
        return _ended(b, name, OutcomeStatus.FAILED, f"the service could not be downloaded: {e}")
    doc = checked.document
    attributes = deal_attributes(doc.protocol, anonymous)
    req = dataclasses.replace(request, attributes=attributes)
    return interpreter.run(b, doc, req, checked.permit, **({"sleep": sleep} if sleep else {}))


def _ended(b: Buyer, name: str, status: OutcomeStatus, summary: str) -> DealResult:
    b.ui.result(DealOutcome("-", status, summary, ()))
    return DealResult(None, f"service:{name}", status, summary)
