"""``semper bench clearing``: debit proofs cleared per second at the acquirer, against raw verification.

Real proofs: purse cards personalised for a bank whose keys are in a SoftHSM2 token, loaded
through the issuer, paying a real PSAM (all simulated in process); the PSAM's closed batch goes to
``Bank.handle("acquirer/clear", ...)`` as the seller's signed request, exactly what the HTTPS
endpoint calls (TLS and JSON parsing excluded; they are measured by the flow tests). Timed: the
request signature, the PSAM header, the entries digest, every card certificate and proof
signature, the duplicate checks and the ledger transaction. Compared with the same number of bare
``cryptography`` ECDSA P-256 verifications in one thread on this machine.
"""
from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import SCHEME_PIN, machine

PIN, BANK_PIN, SO = b"1234", b"bench-bank-pin", b"bench-so-pin"


def bench_clearing(count: int = 2000, cards: int = 4) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from semper.client.payment.modules.purse import clearing_request
    from semper.client.payment.wire import b64, sign
    from semper.client.servers.bank_home import BankHome
    from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
    from semper.client.support.scheme import Scheme
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hardware.purse_records import Signed
    from semper.hardware.simulator import open_card
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import SoftHsmStore, provision
    if not 1 <= count <= 5000:
        raise ValueError("--count is 1 to 5000 (one PSAM batch)")
    from semper.hardware.simulator import card_keys_in
    with tempfile.TemporaryDirectory(prefix="semper-bench-clearing-") as d, contextlib.ExitStack() as stack, \
            card_keys_in(Path(d)):
        folder = Path(d)
        scheme = stack.enter_context(Scheme.load_or_create(folder / "scheme", SCHEME_PIN))
        hsm = SoftHsmStore.in_folder(folder / "softhsm")
        provision(hsm, "bank", BANK_PIN, SO)
        provision(hsm, "holder", BANK_PIN, SO)
        home = BankHome(folder / "bank")
        home.init(scheme, BANK_PIN, token_label="bank", softhsm_conf=hsm.conf, denominations=(1,), bank_id="BENCH")
        bank = home.open(BANK_PIN)
        holder = Pkcs11Signer.open("holder", softhsm_conf=hsm.conf)
        holder.verify_pin(BANK_PIN)
        cert = scheme.certify(holder.public_point(), "bench holder", "HOLDER", None)
        holder.store_certificate(cert.public_bytes(Encoding.DER))
        account = bank.open_account("holder", 978, cert)
        bank.cash_in(account, 2**31 - 1)

        def call(op: str, params: dict[str, Any]) -> dict[str, Any]:
            body = {"op": op, "params": params, "nonce": secrets.token_hex(16), "time": int(time.time()),
                    "idempotency_key": secrets.token_hex(8), "bank": "BENCH"}
            return bank.handle(op, sign(holder, body).to_json())["body"]["result"]

        personalise_psam(folder / "psam.card", scheme, sync=False)
        psam_conn = open_card(folder / "psam.card", sync=False)
        psam = PsamSession(psam_conn)
        bank.link_psam(psam.certificate(), account)
        started = time.perf_counter()
        per_card = -(-count // cards)
        made = 0
        for i in range(cards):
            img = folder / f"card{i}.card"
            personalise_purse_card(img, scheme, CardProfile(PIN, b"12345678", max_balance=2**31 - 1), sync=False,
                                   issuer_point=bank.keys.signer.public_point())
            with open_card(img, sync=False) as c:
                purse = PurseSession(c)
                card_cert = purse.certificate()
                bank.link_card(card_cert, account)
                purse.verify_pin(PIN)
                info = purse.info()
                req, signed = purse.initialize_load(per_card * 10, info.currency)
                res = call("issuer/load", {"account": account, "request": b64(signed.record),
                                           "signature": b64(signed.signature), "card_certificate": b64(card_cert)})
                from semper.client.payment.wire import unb64
                purse.load(Signed(unb64(res["command"], "c"), unb64(res["signature"], "s")))
                for _ in range(min(per_card, count - made)):
                    info = purse.info()
                    _, dreq = psam.begin_debit(info.card_number, info.debit_counter + 1, 7, info.currency)
                    _, proof = purse.debit(psam.certificate(), dreq)
                    psam.complete_debit(card_cert, proof)
                    made += 1
        making_s = time.perf_counter() - started
        header, signed_header = psam.close_batch()
        entries = psam.batch_entries(header.batch_number)
        params = clearing_request(psam.certificate(), signed_header, entries)
        t0 = time.perf_counter()
        result = call("acquirer/clear", params)
        clear_s = time.perf_counter() - t0
        assert result["count"] == count
        # the same batch again: refused as seen (the duplicate check, all verifications done again first)
        t0 = time.perf_counter()
        try:
            call("acquirer/clear", params)
            refused = False
        except Exception:
            refused = True
        again_s = time.perf_counter() - t0
        # raw: bare ECDSA verifications of the same proofs, one thread
        from cryptography import x509
        keys = {c: x509.load_der_x509_certificate(c).public_key() for c in {e.card_certificate for e in entries}}
        t0 = time.perf_counter()
        for e in entries:
            key = keys[e.card_certificate]
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(e.proof.signature, e.proof.record, ec.ECDSA(hashes.SHA256()))
        raw_s = time.perf_counter() - t0
        from semper.client.servers.bank_audit import audit
        report = audit(bank.db, bank.scheme_root)
        psam_conn.close()
        bank.keys.rsa.close()
        holder.close()
        home.close()
    per_s = count / clear_s
    raw_per_s = count / raw_s
    return {"bench": "clearing", "proofs": count, "cards": cards, "cleared_per_s": round(per_s),
            "clear_batch_ms": round(clear_s * 1000, 1), "raw_verify_per_s": round(raw_per_s),
            "ratio_to_raw_verify": round(per_s / raw_per_s, 2), "target_per_s": 5000, "meets_target": per_s >= 5000,
            "duplicate_batch_refused": refused, "duplicate_check_ms": round(again_s * 1000, 1),
            "audit_clean_after": not report.violations, "making_proofs_s": round(making_s, 1), "machine": machine()}
