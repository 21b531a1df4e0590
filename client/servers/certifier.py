"""The service certifier: evaluates commerce service documents, certifies them, revokes certificates.

Why a role of its own (paper 3.5: "downloading must be supplemented by evaluation and certification
of downloadable services"): the certifier vouches for what a service may do, not for who a party
is. Its key is its own (a token key certified by the CA with the role ``certifier``, its own
extended key usage); the CA's key certifies keys and nothing else, and a seller cannot certify its
own services.

Evaluation (:meth:`Certifier.evaluate`): the document must be a valid service document (its shape
and its rules: the grammar of the steps, the evidence they keep, the confirmation in the TINGUIN
after the offer), ask no more than the permit requested for it, and the permit no more than this
certifier's policy allows (payment modules, the most one payment may be, card signatures,
anonymity, periods). Then it signs a service certificate (``commerce/services/certificate.py``).

What it issued and revoked is kept in its folder (``issued.json``, ``revoked.json``, written whole
and replaced atomically); the revocation list is a statement signed afresh when it changed or is
half-way to its next update.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..commerce.errors import CommerceError
from ..commerce.services.certificate import stamp
from ..commerce.services.document import ServiceDocument, ServiceError, read
from ..commerce.services.permits import Permit
from ..exchange.identity import Identity
from ..support.secret_files import write_secret
from ..support.shapes import ShapeError, convert

REVOCATIONS_HOURS = 24


class CertifierRefusal(CommerceError):
    """The certifier will not certify (or revoke) this: the document or the request is at fault."""

    http_status = 422
    code = "not_certified"


@dataclass(frozen=True)
class Policy:
    """The most this certifier certifies: a requested permit beyond it is refused."""

    modules: tuple[str, ...] = ("card-purse", "setpay", "cheque", "ecash")
    max_amount: int = 100_000
    card_signature: bool = True
    anonymity: bool = True
    max_periods: int = 12
    max_days: int = 366

    def beyond(self, p: Permit) -> list[str]:
        out = []
        extra = [m for m in p.modules if m not in self.modules]
        if extra:
            out.append(f"payment modules {', '.join(extra)} are not certified here")
        if p.max_amount > self.max_amount:
            out.append(f"at most {self.max_amount} a payment is certified here, not {p.max_amount}")
        if p.card_signature and not self.card_signature:
            out.append("card signatures are not certified here")
        if p.anonymity and not self.anonymity:
            out.append("anonymous deals are not certified here")
        if p.max_periods > self.max_periods:
            out.append(f"at most {self.max_periods} periods are certified here")
        return out


class Certifier:
    def __init__(self, identity: Identity, folder: Path, url: str, policy: Policy | None = None) -> None:
        self.identity = identity
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.url = url.rstrip("/")
        self.policy = policy or Policy()
        self._lock = threading.Lock()
        self._list: tuple[bytes, dt.datetime] | None = None

    # ---- the folder ------------------------------------------------------------------------------
    def _load(self, name: str) -> list[dict[str, Any]]:
        path = self.folder / name
        if not path.exists():
            return []
        data = json.loads(path.read_text())
        return list(data) if isinstance(data, list) else []

    def _save(self, name: str, rows: list[dict[str, Any]]) -> None:
        # atomic, synced, the folder synced too (the operator's records: 0600 like the rest of the folder)
        write_secret(self.folder / name, json.dumps(rows, indent=1, sort_keys=True))

    # ---- evaluation and certification ------------------------------------------------------------------
    def evaluate(self, document: bytes | dict[str, Any], permit: Permit) -> ServiceDocument:
        """The checks before certifying; CertifierRefusal names every fault found."""
        try:
            doc = read(document, "the service document")
        except ServiceError as e:
            raise CertifierRefusal(str(e)) from None
        problems = permit.overreach(doc) + self.policy.beyond(permit)
        if problems:
            raise CertifierRefusal(f"the service {doc.name!r} is not certified: " + "; ".join(problems))
        return doc

    def certify(self, document: bytes | dict[str, Any], permit: Permit | dict[str, Any], *, days: int = 90,
                not_before: dt.datetime | None = None) -> bytes:
        """Evaluate the document and sign its service certificate (DER). ``not_before``: the operator may
        date the validity back (never beyond its policy's length)."""
        if isinstance(permit, dict):
            try:
                permit = convert(permit, Permit, "the permit")
            except ShapeError as e:
                raise CertifierRefusal(str(e)) from None
        if not 1 <= days <= self.policy.max_days:
            raise CertifierRefusal(f"a certificate is valid for 1 to {self.policy.max_days} days")
        doc = self.evaluate(document, permit)
        start = (not_before or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        serial = secrets.token_hex(16).upper()
        body = {"type": "service-certificate", "serial": serial, "service": doc.name, "version": doc.version,
                "document_sha256": doc.sha256, "permits": {"modules": list(permit.modules),
                                                            "max_amount": permit.max_amount,
                                                            "currency": permit.currency,
                                                            "card_signature": permit.card_signature,
                                                            "anonymity": permit.anonymity,
                                                            "max_periods": permit.max_periods},
                "not_before": stamp(start), "not_after": stamp(start + dt.timedelta(days=days)),
                "revocations": f"{self.url}/revocations"}
        der = self.identity.sign(body)
        with self._lock:
            rows = self._load("issued.json")
            rows.append({"serial": serial, "service": doc.name, "version": doc.version,
                         "document_sha256": doc.sha256, "not_after": body["not_after"]})
            self._save("issued.json", rows)
        return der

    def revoke(self, serial: str, reason: str = "unspecified") -> dict[str, Any]:
        serial = serial.upper()
        with self._lock:
            if not any(r["serial"] == serial for r in self._load("issued.json")):
                raise CertifierRefusal(f"this certifier issued no service certificate {serial}")
            revoked = self._load("revoked.json")
            if any(r["serial"] == serial for r in revoked):
                raise CertifierRefusal(f"the service certificate {serial} is revoked already")
            row = {"serial": serial, "reason": reason[:200] or "unspecified",
                   "revoked_at": stamp(dt.datetime.now(dt.UTC))}
            revoked.append(row)
            self._save("revoked.json", revoked)
            self._list = None
        return row

    def revocations(self) -> bytes:
        """The signed revocation list (DER), signed afresh when it changed or is half-way to its next update."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            if self._list is not None and now < self._list[1]:
                return self._list[0]
            body = {"type": "service-revocations", "this_update": stamp(now),
                    "next_update": stamp(now + dt.timedelta(hours=REVOCATIONS_HOURS)),
                    "revoked": self._load("revoked.json")}
            der = self.identity.sign(body)
            self._list = (der, now + dt.timedelta(hours=REVOCATIONS_HOURS / 2))
            return der

    def listing(self) -> dict[str, Any]:
        with self._lock:
            return {"issued": self._load("issued.json"), "revoked": self._load("revoked.json")}
