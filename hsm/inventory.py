"""What a token holds, as plain data for `semper token info`: keys and certificates by CKA_ID."""
from __future__ import annotations

import pkcs11.exceptions as p11x
from cryptography import x509
from pkcs11 import Attribute, ObjectClass

from . import errors
from .module import Module
from .signer import ec_point

_KINDS = ((ObjectClass.PUBLIC_KEY, "public key"), (ObjectClass.PRIVATE_KEY, "private key"),
          (ObjectClass.CERTIFICATE, "certificate"))


def objects(module: Module, label: str) -> list[dict[str, object]]:
    """The objects a public session sees (private keys only on tokens that show them without login)."""
    out: list[dict[str, object]] = []
    with errors.translated(token=label, action="list the objects"), module.token(label).open() as session:
        for cls, kind in _KINDS:
            for obj in session.get_objects({Attribute.CLASS: cls}):
                entry: dict[str, object] = {"kind": kind, "id": bytes(obj[Attribute.ID]).hex(),
                                            "label": obj[Attribute.LABEL]}
                if cls == ObjectClass.PUBLIC_KEY:
                    try:
                        entry["point"] = ec_point(obj[Attribute.EC_POINT]).hex()
                    except (p11x.PKCS11Error, ValueError):   # an RSA key, or a module that hides the point
                        entry["point"] = None
                if cls == ObjectClass.CERTIFICATE:
                    cert = x509.load_der_x509_certificate(bytes(obj[Attribute.VALUE]))
                    entry["subject"] = cert.subject.rfc4514_string()
                    entry["issuer"] = cert.issuer.rfc4514_string()
                out.append(entry)
    return out
