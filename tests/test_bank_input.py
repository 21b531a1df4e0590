"""Bad input at every bank endpoint: a clear 4xx error and no change in the ledger.

For every operation: a body that is not JSON, a body that is not a signed request, a signature that
does not verify, a signer no trusted root certified, a stale or misaddressed request, a replay of
an accepted request. Where the operation takes them: an unknown account, a negative amount, an
amount above the limit, another currency. Each time the ledger (balances, entries, postings) must
be exactly as before.
"""
from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from postgres import storages
from test_payment_support import EUR, World, world

from semper.client.payment import formats
from semper.client.payment.errors import PaymentRefused
from semper.client.payment.wire import SignedJson, b64, digest
from semper.client.support.channels import ServiceError

OPS = ["accounts/balance", "issuer/load", "issuer/confirm", "acquirer/clear", "acquirer/clear_proof", "set/authorise",
       "set/capture", "set/release", "set/refund", "set/status", "cheque/deposit", "cheque/status", "mint/withdraw",
       "mint/deposit"]

pytestmark = storages()          # the bank's core cases on SQLite and on PostgreSQL


def _raw(w: World, path: str, data: bytes, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(w.home.tls_root))
    host, port = w.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _refused(w: World, fn: Any, status: int | tuple[int, ...], code: str | None = None) -> None:
    before = w.ledger()
    with pytest.raises((ServiceError, PaymentRefused)) as e:
        fn()
    err: Any = e.value
    message = getattr(err, "message", str(err))
    statuses = status if isinstance(status, tuple) else (status,)
    assert err.status in statuses and 400 <= err.status < 500, (err.status, err.code, message)
    if code:
        assert err.code == code, message
    assert message and "Traceback" not in message
    assert w.ledger() == before


@pytest.mark.parametrize("op", OPS)
def test_not_json_or_not_signed(world: World, op: str) -> None:
    before = world.ledger()
    for data, ctype in ((b"{not json", "application/json"), (b"[]", "application/json"),
                        (b'{"body": {}}', "application/json"), (b"x=1", "application/x-www-form-urlencoded")):
        status, answer = _raw(world, "/" + op, data, ctype)
        assert 400 <= status < 500 and answer["error"] and answer["message"], (op, data, status, answer)
    c = world.client(world.signers["buyer"])
    env = c.envelope(op, {}, "k" * 16)
    for broken in ({**env, "body": {**env["body"], "extra": 1}}, {**env, "certificate": "%%%"},
                   {**env, "signature": ""}):
        with pytest.raises(ServiceError) as e:
            c.http.post("/" + op, broken)
        assert 400 <= e.value.status < 500
    assert world.ledger() == before


@pytest.mark.parametrize("op", OPS)
def test_bad_signature_untrusted_signer_stale_and_misaddressed(world: World, other_scheme: Any, op: str) -> None:
    c = world.client(world.signers["buyer"])
    env = c.envelope(op, {"account": world.accounts["buyer"]}, "k" * 16)
    sig = bytearray(SignedJson.from_json(env).signature)
    sig[-3] ^= 0x01
    _refused(world, lambda: c.http.post("/" + op, {**env, "signature": b64(bytes(sig))}), 401, "bad_signature")
    changed = {**env, "body": {**env["body"], "params": {"account": world.accounts["seller"]}}}
    _refused(world, lambda: c.http.post("/" + op, changed), 401, "bad_signature")
    # a certificate from a root the bank does not trust, for the same key
    foreign = other_scheme.certify(world.signers["buyer"].public_point(), "impostor", "X", None)
    _refused(world, lambda: c.http.post("/" + op, {**env, "certificate": b64(foreign.public_bytes(Encoding.DER))}),
             401, "bad_signature")
    for field, value, code in (("time", env["body"]["time"] - 3600, "stale"), ("bank", "BANK-OTHER", "wrong_bank"),
                               ("op", "accounts/balance" if op != "accounts/balance" else "set/status", "malformed")):
        body = {**env["body"], field: value}
        s = world.signers["buyer"]
        re_signed = {"body": body, "certificate": env["certificate"], "signature": b64(s.sign_digest(digest(body)))}
        _refused(world, lambda op=op, re_signed=re_signed: c.http.post("/" + op, re_signed), 400, code)


def test_unknown_operation_is_404(world: World) -> None:
    status, answer = _raw(world, "/issuer/mint_money", b"{}")
    assert status == 404 and answer["error"] in ("unknown_operation", "not_found")


@pytest.mark.parametrize("op, params", [
    ("accounts/balance", {"account": "ANOSUCHACCOUNT"}),
    ("set/capture", {"authorisation": "AUNOSUCH", "amount": 1}),
    ("set/release", {"authorisation": "AUNOSUCH"}),
    ("set/refund", {"authorisation": "AUNOSUCH", "amount": 1}),
    ("set/status", {"authorisation": "AUNOSUCH"}),
    ("mint/deposit", None),
    ("mint/withdraw", None),
    ("cheque/deposit", None),
])
def test_unknown_account(world: World, op: str, params: dict[str, Any] | None) -> None:
    c = world.client(world.signers["buyer"])
    if op == "mint/withdraw":
        key = world.bank.info()["mint_keys"][0]
        n = world.bank.mint_keys[key["key_id"]].public.key_size // 8
        params = {"account": "ANOSUCH", "coins": [{"key_id": key["key_id"], "blinded": b64(b"\x01" * n)}]}
    if op == "mint/deposit":
        params = {"account": "ANOSUCH", "coins": [_spendable_coin(world)]}
    if op == "cheque/deposit":
        params = {"account": "ANOSUCH", "cheque": _cheque(world, "buyer", "ANOSUCH", 5)}
    _refused(world, lambda: c.call(op, params), 404)


def _cheque(w: World, drawer: str, payee: str, amount: int, currency: int = EUR) -> dict[str, Any]:
    body = formats.cheque(w.bank.bank_id, w.accounts[drawer], "c" + digest({"p": payee, "a": amount}).hex()[:15], payee,
                          amount, currency, "0" * 64)
    s = w.signers[drawer]
    return SignedJson(body, s.certificate(), s.sign_digest(digest(body))).to_json()


def _spendable_coin(w: World) -> dict[str, str]:
    """A real coin, withdrawn by the buyer through the blind-signature protocol."""
    import secrets

    from semper.client.payment import blind
    w.bank.cash_in(w.accounts["buyer"], 1)
    key = next(k for k in w.bank.mint_keys.values() if k.denomination == 1)
    serial = secrets.token_hex(32)
    b = blind.blind(key.public, formats.coin_message(key.key_id, serial))
    res = w.client(w.signers["buyer"]).call("mint/withdraw", {"account": w.accounts["buyer"], "coins": [
        {"key_id": key.key_id, "blinded": b64(b.blinded)}]})
    from semper.client.payment.wire import unb64
    sig = blind.finalize(key.public, b, unb64(res["result"]["signatures"][0], "sig", 1024))
    return {"key_id": key.key_id, "serial": serial, "signature": b64(sig)}


@pytest.mark.parametrize("amount, code", [(-5, "bad_amount"), (0, "bad_amount"), (2**31, "amount_too_large"),
                                          (2**53 - 1, "amount_too_large")])
def test_bad_amounts(world: World, amount: int, code: str) -> None:
    seller = world.client(world.signers["seller"])
    for op, params in (("set/capture", {"authorisation": "AUX", "amount": amount}),
                       ("set/refund", {"authorisation": "AUX", "amount": amount}),
                       ("set/authorise", {"account": world.accounts["seller"], "payment_id": "p", "amount": amount,
                                          "currency": EUR, "oi_hash": "0" * 64, "sealed_pi": {},
                                          "dual_signature": "AA==",
                                          "payer_certificate": "AA=="})):
        _refused(world, lambda op=op, params=params: seller.call(op, params), 400, code)
    if amount < 2**31 + 1:
        cheque = _cheque(world, "buyer", world.accounts["seller"], amount)
        _refused(world, lambda: seller.call("cheque/deposit", {"account": world.accounts["seller"], "cheque": cheque}),
                 400, code)


def test_currency_mismatch(world: World) -> None:
    seller = world.client(world.signers["seller"])
    world.bank.cash_in(world.accounts["buyer"], 100)
    cheque = _cheque(world, "buyer", world.accounts["seller"], 10, currency=840)
    _refused(world, lambda: seller.call("cheque/deposit", {"account": world.accounts["seller"], "cheque": cheque}),
             422, "currency_mismatch")


def test_replayed_request_changes_nothing(world: World) -> None:
    world.bank.cash_in(world.accounts["buyer"], 50)
    seller = world.client(world.signers["seller"])
    cheque = _cheque(world, "buyer", world.accounts["seller"], 7)
    env = seller.envelope("cheque/deposit", {"account": world.accounts["seller"], "cheque": cheque}, "replay-test-1")
    first = seller.http.post("/cheque/deposit", env)
    assert first["body"]["result"]["state"] == "paid"
    _refused(world, lambda: seller.http.post("/cheque/deposit", env), 409, "replayed")
    # a retry (new nonce, same idempotency key) gets the same answer and pays nothing more
    before = world.ledger()
    again = seller.call("cheque/deposit", {"account": world.accounts["seller"], "cheque": cheque},
                        idempotency_key="replay-test-1")
    assert again == first["body"]
    assert world.ledger() == before
    # the same key for another request is refused
    other = _cheque(world, "buyer", world.accounts["seller"], 8)
    _refused(world, lambda: seller.call("cheque/deposit", {"account": world.accounts["seller"], "cheque": other},
                                        idempotency_key="replay-test-1"), 409, "idempotency_conflict")
    # presenting the paid cheque again under a new key: refused, never paid twice
    _refused(world, lambda: seller.call("cheque/deposit", {"account": world.accounts["seller"], "cheque": cheque}),
             409, "cheque_paid")


def test_someone_elses_account_is_forbidden(world: World) -> None:
    thief = world.client(world.signers["buyer2"])
    _refused(world, lambda: thief.call("accounts/balance", {"account": world.accounts["buyer"]}), 403, "not_owner")
    key = next(iter(world.bank.mint_keys.values()))
    n = key.public.key_size // 8
    _refused(world, lambda: thief.call("mint/withdraw", {"account": world.accounts["buyer"], "coins": [
        {"key_id": key.key_id, "blinded": b64(b"\x01" * n)}]}), 403, "not_owner")
