"""Message shapes (support/shapes.py): every endpoint family refuses a body with an extra field, a
missing field or a field of the wrong type with the right 400 code and a message naming the field,
and still takes the bodies its clients send.

The services are the real aiohttp apps (CA, third party, bank, shop, exchange mailbox) over loopback,
with stand-in backends that answer ``409 reached`` when called: a body that reaches the backend got
past its shape. The bank's parameters, the payment modules' messages and the exchange statements
are read by the same functions the services use.
"""
from __future__ import annotations

import base64
import http.client
import json
import secrets
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semper.client.exchange import messages as xmsg
from semper.client.exchange.errors import BadMessage
from semper.client.exchange.wire import Mailbox
from semper.client.exchange.wire import Message as ExchangeMessage
from semper.client.payment import adapter, formats
from semper.client.payment.errors import ProtocolError
from semper.client.payment.manager import Envelope
from semper.client.payment.module import receive
from semper.client.payment.modules import ecash, mandate, purse, setpay
from semper.client.payment.wire import SignedJson, read
from semper.client.servers import bank_http, ca_http, shop_http, ttp_http
from semper.client.servers.bank import Request
from semper.client.servers.bank_mint import Deposit, Withdraw
from semper.client.servers.bank_purse import Clear, ClearProof, Confirm, Load
from semper.client.servers.bank_setpay import AuthorisationRef, Authorise, Capture, ChequeRef, DepositCheque
from semper.client.servers.bank_store import BankRefusal, Op, read_params
from semper.client.support.http_service import ApiError, ServiceRunner
from semper.client.support.shapes import Shape, ShapeError, convert, decode

B64 = base64.b64encode(b"\x30\x03\x02\x01\x00").decode()
SIG = base64.b64encode(b"\x30" * 70).decode()
MAC = base64.b64encode(b"\x01" * 32).decode()
HEX64 = "0123456789abcdef" * 4
SIGNED = {"body": {"op": "x"}, "certificate": B64, "signature": SIG}


def _reached(*args: Any, **kwargs: Any) -> Any:
    raise ApiError(409, "reached", "the body got past its shape")


class _Stub:
    """Any backend: every call and attribute is a call that answers 409 reached."""

    ops = {"accounts/balance": None, "issuer/load": None}
    deals: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return _reached

    def check_admin(self, secret: str) -> bool:
        return True


# (family, path, shape, a body its clients send)
ENDPOINTS: list[tuple[str, str, type[Shape], dict[str, Any]]] = [
    ("ca", "/register", ca_http.Registration, {"registration_id": "0" * 32, "csr": B64, "mac": MAC}),
    ("ca", "/admin/persons", ca_http.NewPerson, {"name": "Erin", "email": "e@example.org", "role": "seller",
                                                  "hosts": ["shop.example"]}),
    ("ca", "/admin/revoke", ca_http.Revocation, {"serial": "0A1B", "reason": "keyCompromise"}),
    ("ttp", "/resolve", ttp_http.TtpCall, {"request": B64}),
    ("ttp", "/status", ttp_http.TtpCall, {"request": B64}),
    ("bank", "/accounts/balance", SignedJson, SIGNED),
    ("bank", "/issuer/load", SignedJson, SIGNED),
    ("shop", "/deals", shop_http.NewDeal, {"workflow": "mail-order", "items": [{"sku": "tea", "quantity": 2}],
                                           "nonce": "n" * 32, "anonymous": False}),
    ("shop", "/deals/order", shop_http.Order, {"deal": "D1", "order": B64, "mailbox": "https://127.0.0.1:1/"}),
    ("shop", "/deals/pay", shop_http.Payment, {"deal": "D1", "envelope": {"payment_id": "p", "module": "m",
                                                                         "body": {}}}),
    ("shop", "/deals/confirm", shop_http.DealRef, {"deal": "D1"}),
    ("shop", "/deals/delivery", shop_http.DealRef, {"deal": "D1"}),
    ("exchange", "/exchange", ExchangeMessage, {"session": "s" * 32, "kind": "negotiate", "body": {}}),
]


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, str]]:
    stub: Any = _Stub()
    apps = {"ca": ca_http.build_app(stub), "ttp": ttp_http.build_app(stub), "bank": bank_http.build_app(stub),
            "shop": shop_http.build_app(stub, group_commits=False), "exchange": Mailbox(on_new=_async_reached).app()}
    runners = {name: ServiceRunner(app).start() for name, app in apps.items()}
    try:
        yield {name: r.url for name, r in runners.items()}
    finally:
        for r in runners.values():
            r.stop()


async def _async_reached(*args: Any) -> None:
    _reached()


def post(url: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": "Bearer admin"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def required(shape: type[Shape]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(shape) if f.required]


WRONG: list[Any] = [7, "text", [1], {"a": 1}, True]


def wrong_for(value: Any) -> list[Any]:
    """JSON values of another type than ``value`` (bool and int count as different types)."""
    return [w for w in WRONG if type(w) is not type(value)]


@st.composite
def broken(draw: st.DrawFn, template: dict[str, Any], shape: type[Shape]) -> tuple[dict[str, Any], str, str]:
    """(body, expected code, the field the message must name): one extra, missing or mistyped field."""
    how = draw(st.sampled_from(["extra", "missing", "type"] if required(shape) else ["extra", "type"]))
    body = json.loads(json.dumps(template))
    if how == "extra":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(lambda n: n not in body))
        body[name] = draw(st.sampled_from(WRONG))
        return body, "unknown_field", name
    if how == "missing":
        name = draw(st.sampled_from(required(shape)))
        del body[name]
        return body, "missing_field", name
    name = draw(st.sampled_from(sorted(body)))
    body[name] = draw(st.sampled_from(wrong_for(template[name])))
    return body, "wrong_type", name


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_every_endpoint_refuses_extra_missing_and_mistyped_fields(services: dict[str, str], data: Any) -> None:
    family, path, shape, template = data.draw(st.sampled_from(ENDPOINTS))
    body, code, field = data.draw(broken(template, shape))
    status, answer = post(services[family], path, body)
    assert (status, answer["error"]) == (400, code), (family, path, body, answer)
    assert field in answer["message"], answer


@pytest.mark.parametrize("family, path, shape, template", ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_the_bodies_clients_send_still_pass(services: dict[str, str], family: str, path: str, shape: Any,
                                            template: dict[str, Any]) -> None:
    optional = {f.encode_name for f in msgspec.structs.fields(shape) if not f.required}
    for body in (template, {k: v for k, v in template.items() if k not in optional}):
        if "session" in body:                       # a new exchange each time (the mailbox keeps a session's queue)
            body = {**body, "session": secrets.token_hex(16)}
        status, answer = post(services[family], path, body)
        assert (status, answer.get("error")) == (409, "reached"), answer


@pytest.mark.parametrize("raw, code", [
    (b'{"registration_id": "00", "csr": "", "x": 1}', "unknown_field"),      # structure before values
    (b'{"registration_id": 1, "csr": "AA==", "mac": "AA==", "n": NaN}', "malformed_json"),   # not JSON first
    (b'{"registration_id": "' + b"0" * 32 + b'", "csr": "\\ud800", "mac": "AA=="}', "malformed_json"),
    (b'{"registration_id": "' + b"0" * 32 + b'", "csr": "AA=", "mac": "AA=="}', "bad_base64"),
    (b'{"registration_id": "' + b"0" * 32 + b'", "csr": "", "mac": "AA=="}', "bad_length"),
    (b'{"registration_id": "' + b"0" * 31 + b'g", "csr": "AA==", "mac": "AA=="}', "bad_registration_id"),
    (b"[]", "malformed_json"), (b"", "malformed_json"), (b'{"a": 1} {}', "malformed_json"),
    (b'{"registration_id": "' + b"0" * 32 + b'", "csr": "AA==", "mac": "AA==", "registration_id": 5}', "wrong_type"),
])
def test_codes_of_the_registration_body(raw: bytes, code: str) -> None:
    with pytest.raises(ShapeError) as e:
        decode(raw, ca_http.Registration)
    assert e.value.code == code, e.value


# ---- the bank's parameters: the function Bank.handle reads them with ------------------------------------
PARAMS: list[tuple[type[Shape], dict[str, Any]]] = [
    (Load, {"account": "A1", "request": B64, "signature": SIG, "card_certificate": B64}),
    (Confirm, {"confirmation": B64, "signature": SIG, "card_certificate": B64}),
    (Clear, {"psam_certificate": B64, "header": B64, "header_signature": SIG, "certificates": [B64],
             "entries": [[0, B64, SIG]]}),
    (ClearProof, {"psam_certificate": B64, "request": B64, "request_signature": SIG, "card_certificate": B64,
                  "proof": B64, "proof_signature": SIG}),
    (Authorise, {"account": "A1", "payment_id": "p1", "amount": 5, "currency": 978, "oi_hash": HEX64,
                 "sealed_pi": {"wrapped": B64}, "dual_signature": SIG, "payer_certificate": B64}),
    (Capture, {"authorisation": "AU1", "amount": 5}),
    (AuthorisationRef, {"authorisation": "AU1"}),
    (DepositCheque, {"account": "A1", "cheque": SIGNED}),
    (ChequeRef, {"drawer": "A1", "number": "c0000001"}),
    (Withdraw, {"account": "A1", "coins": [{"key_id": "k", "blinded": B64}]}),
    (Deposit, {"account": "A1", "coins": [{"key_id": "k", "serial": HEX64, "signature": SIG}]}),
]


@FUZZ
@given(data=st.data())
def test_bank_parameters_refuse_extra_missing_and_mistyped(data: Any) -> None:
    shape, template = data.draw(st.sampled_from(PARAMS))
    op = Op("x/y", shape, _reached, _reached)
    read_params(op, template)                                           # what clients send passes
    body, code, field = data.draw(broken(template, shape))
    with pytest.raises(BankRefusal) as e:
        read_params(op, body)
    assert (e.value.http_status, e.value.code) == (400, code) and field in str(e.value), (body, e.value)


@pytest.mark.parametrize("amount, code", [(0, "bad_amount"), (-1, "bad_amount"), (2**31, "amount_too_large"),
                                          (True, "wrong_type"), (1.0, "wrong_type"), ("5", "wrong_type")])
def test_bank_amounts_keep_their_codes(amount: Any, code: str) -> None:
    with pytest.raises(BankRefusal) as e:
        read_params(Op("set/capture", Capture, _reached, _reached), {"authorisation": "AU1", "amount": amount})
    assert e.value.code == code


def test_the_signed_request_body_is_malformed_whatever_is_wrong() -> None:
    good = {"op": "set/status", "params": {}, "nonce": "n" * 16, "time": 10**400, "idempotency_key": "k" * 8,
            "bank": "B"}
    assert convert(good, Request).time == 10**400                     # a huge time is stale later, not a 500
    for bad in ({**good, "x": 1}, {**good, "time": 1.5}, {**good, "time": True}, {**good, "nonce": "short"},
                {k: v for k, v in good.items() if k != "bank"}, {**good, "params": []}):
        with pytest.raises(ShapeError):
            convert(bad, Request)


# ---- the payment modules' messages and the exchange statements ----------------------------------------
MESSAGES: list[tuple[type[Shape], dict[str, Any]]] = [
    (purse.Hello, {"kind": "hello", "card": "00112233AABBCCDD", "counter": 3, "currency": 978,
                   "card_certificate": B64}),
    (purse.Challenge, {"kind": "challenge", "request": B64, "signature": SIG, "psam_certificate": B64}),
    (purse.Proof, {"kind": "proof", "proof": B64, "signature": SIG}),
    (purse.Receipt, {"kind": "receipt", "batch": 1, "index": 0}),
    (ecash.Coins, {"kind": "coins", "currency": 978, "coins": [{"key_id": "k", "serial": HEX64, "signature": SIG}]}),
    (ecash.Deposited, {"kind": "deposited", "answer": SIGNED}),
    (mandate.ChequeMessage, {"kind": "cheque", "cheque": SIGNED}),
    (setpay.Instruction, {"kind": "instruction", "oi": {}, "pi_hash": HEX64, "sealed_pi": {}, "dual_signature": SIG,
                          "payer_certificate": B64}),
    (setpay.Authorised, {"kind": "authorised", "answer": SIGNED}),
    (adapter.Token, {"kind": "token", "token": {"t": 1}}),
    (adapter.Redeemed, {"kind": "redeemed", "ok": True}),
]


@FUZZ
@given(data=st.data())
def test_payment_messages_name_the_field(data: Any) -> None:
    shape, template = data.draw(st.sampled_from(MESSAGES))
    assert receive(template, shape)                                    # what the other side sends passes
    body, _code, field = data.draw(broken(template, shape).filter(lambda b: b[2] != "kind"))
    with pytest.raises(ProtocolError, match=field):
        receive(body, shape)
    with pytest.raises(ProtocolError, match="expected a"):
        receive({**template, "kind": "something-else"}, shape)


def test_payment_envelope_and_cheque_body() -> None:
    assert read({"payment_id": "p", "module": "m", "body": {}}, Envelope, "x").module == "m"
    for bad in ({"payment_id": "p", "module": "m"}, {"payment_id": 1, "module": "m", "body": {}}, [],
                {"payment_id": "p", "module": "m", "body": {}, "extra": 1}):
        with pytest.raises(ProtocolError):
            read(bad, Envelope, "the payment message")
    cheque = formats.cheque("B", "A1", "c0000001", "A2", 5, 978, "0" * 64)
    assert convert(cheque, formats.Cheque).amount == 5
    with pytest.raises(ShapeError) as e:
        convert({**cheque, "amount": 0}, formats.Cheque)
    assert e.value.code == "bad_amount"


def test_exchange_statement_bodies() -> None:
    request = xmsg.request_body("resolve", None, "x" * 64, item={"type": "statement"}, attachments={"k": 1})
    with pytest.raises(BadMessage):                                      # no proposal: refused later, not here
        xmsg.read({**request, "extra": 1}, xmsg.TtpRequest, "the request")
    assert xmsg.read(request, xmsg.TtpRequest, "the request").attachments == {"k": 1}
    for bad in ({**request, "kind": "pay"}, {**request, "xid": 5}, {**request, "type": "decision"}):
        with pytest.raises(BadMessage):
            xmsg.read(bad, xmsg.TtpRequest, "the request")
