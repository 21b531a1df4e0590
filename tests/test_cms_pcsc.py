"""A signed statement made on the card through pcscd, checked by semper and by openssl cms."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_cms import PIN, Pki, openssl_cms_verify, pki

from semper.client.support import cms
from semper.client.support.trust import TrustStore
from semper.client.support.verify import verify_statement
from semper.hardware.pcscd import VirtualCards
from semper.hardware.piv import PivSession, PivSigner
from semper.hardware.transport import PcscConnection

pytestmark = pytest.mark.pcsc


def test_statement_signed_on_the_card_through_pcscd(pki: Pki, tmp_path: Path) -> None:
    image = tmp_path / "card"
    shutil.copyfile(pki.card_a, image)
    statement = {"type": "order", "deal": "d-77", "items": [{"sku": "book-1", "qty": 1}], "total": "12.50 EUR"}
    with VirtualCards([image], sync=False) as vc, PcscConnection(vc.readers[0]) as conn:
        der = cms.sign_statement(PivSigner(PivSession(conn)), statement, pin=PIN)
    verified = verify_statement(der, TrustStore([pki.root]))
    assert verified.body == statement and verified.type == "order"
    r = openssl_cms_verify(der, pki.root_pem, tmp_path)
    assert r.returncode == 0 and b"Verification successful" in r.stderr, r.stderr
    assert r.stdout == cms.canonical_json(statement)
