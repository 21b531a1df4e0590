"""One exception base (issue 13, item 5): every error the project raises is a ``SemperError`` whose class
says what it means to the command line (``exit_status``) and to a service (``http_status``, ``code``).

The CLI and the services choose by class, never by the class's name or by words in the message: the
walk below finds every exception class of the project; the CLI and HTTP tests raise classes the old
code recognised by name or by message and check that only the class counts.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_commerce_units import _cert, _root
from test_tinguin_samples import SoftSigner

import semper.bench
import semper.card_applet_sim
import semper.chaos
import semper.client
import semper.hardware
import semper.hsm
from semper.client import cli
from semper.hardware import errors as hw

PACKAGES = (semper.client, semper.hardware, semper.hsm, semper.bench, semper.chaos, semper.card_applet_sim)
INDEPENDENT = "semper.card_applet_sim"        # the simulated card imports nothing of the host side
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def _all_modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg.__name__)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                  if not m.name.endswith(".__main__")]          # a __main__ runs its command when imported
    return names


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.fixture(scope="module")
def project_exceptions() -> list[type[BaseException]]:
    for name in _all_modules():
        importlib.import_module(name)
    found = {c for c in _subclasses(BaseException) if c.__module__.startswith("semper.")}
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


def test_every_exception_of_the_project_derives_from_semper_error(project_exceptions) -> None:
    assert len(project_exceptions) > 90          # the walk found the hierarchies (about a hundred classes)
    outside = [f"{c.__module__}.{c.__qualname__}" for c in project_exceptions
               if not c.__module__.startswith(INDEPENDENT) and not issubclass(c, hw.SemperError)]
    assert not outside, "not a SemperError:\n" + "\n".join(outside)
    card_side = [c for c in project_exceptions if c.__module__.startswith(INDEPENDENT)]
    assert card_side and not any(issubclass(c, hw.SemperError) for c in card_side)


def test_every_exception_class_has_sane_statuses(project_exceptions) -> None:
    wrong = []
    for c in project_exceptions:
        if c.__module__.startswith(INDEPENDENT):
            continue
        if hasattr(c, "user_facing"):
            wrong.append(f"{c.__qualname__}: user_facing is gone; the base class says it")
        exit_status, http_status, code = (getattr(c, a, None) for a in ("exit_status", "http_status", "code"))
        if exit_status not in (1, 2):
            wrong.append(f"{c.__qualname__}: exit_status {exit_status!r}")
        if not isinstance(http_status, int) or not 400 <= http_status <= 599:
            wrong.append(f"{c.__qualname__}: http_status {http_status!r}")
        if not isinstance(code, str) or not CODE.match(code):
            wrong.append(f"{c.__qualname__}: code {code!r}")
    assert not wrong, "\n".join(wrong)


def test_bad_input_classes_exit_2_and_failed_operations_exit_1() -> None:
    from semper.client.commands import UsageError
    from semper.client.commerce.errors import DealDeclined, FormError
    from semper.client.payment.errors import PaymentRefused
    from semper.client.support.money import AmountError
    from semper.client.support.prefs import PrefsError
    from semper.client.support.regkeys import RegistrationKeyError
    for bad_input in (UsageError, AmountError, FormError, PrefsError, RegistrationKeyError):
        assert bad_input.exit_status == 2, bad_input
    for failed in (hw.InsufficientFundsError, hw.WrongPinError, PaymentRefused, DealDeclined, hw.HardwareError):
        assert failed.exit_status == 1, failed


# ---- the CLI: the class decides, nothing else ----------------------------------------------------------
def _run(monkeypatch, capsys, exc: BaseException, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``semper boom`` whose one command raises ``exc``: (exit status, what it printed on stderr)."""
    def boom(args: argparse.Namespace) -> int:
        raise exc

    def parser() -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog="semper")
        ap.add_subparsers(dest="command", required=True).add_parser("boom").set_defaults(fn=boom)
        return ap
    monkeypatch.setattr(cli, "build_parser", parser)
    monkeypatch.delenv("SEMPER_DEBUG", raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    status = cli.main(["boom"])
    return status, capsys.readouterr().err


def test_the_cli_exits_with_the_status_of_the_class(monkeypatch, capsys) -> None:
    from semper.client.commands import UsageError
    from semper.client.commerce.errors import FormError
    from semper.client.payment.errors import PaymentRefused
    from semper.client.support.prefs import PrefsError

    class NewBadInput(hw.SemperError):                  # a class no list in the CLI names
        exit_status = 2

    cases = [(UsageError("--count must be positive"), 2), (FormError("postcode", "5 digits"), 2),
             (PrefsError("unknown preference 'x'"), 2), (NewBadInput("that is not a card number"), 2),
             (hw.InsufficientFundsError("the balance is too low"), 1),
             (PaymentRefused("the bank refused: no such account", "unknown_account", 404), 1),
             (hw.SemperError("the operation failed"), 1)]
    for exc, expected in cases:
        status, err = _run(monkeypatch, capsys, exc)
        assert (status, err) == (expected, f"semper: {exc}\n"), type(exc)


def test_the_cli_recognises_no_class_by_its_name_or_attributes(monkeypatch, capsys) -> None:
    """The old handler printed any class named SchemeError or PurseFlowError, or with ``user_facing``, as
    the operation's failure; a class outside the hierarchy is a bug, whatever it is called."""
    class SchemeError(Exception):
        pass

    class PurseFlowError(Exception):
        user_facing = True

    for exc in (SchemeError("the scheme is gone"), PurseFlowError("the purse said no"), KeyError("slot")):
        status, err = _run(monkeypatch, capsys, exc)
        assert status == 1 and err.startswith(f"semper: unexpected error: {type(exc).__name__}"), err
        assert "SEMPER_DEBUG" in err and err.count("\n") == 1
    with pytest.raises(SchemeError):
        _run(monkeypatch, capsys, SchemeError("details, please"), {"SEMPER_DEBUG": "1"})
    status, err = _run(monkeypatch, capsys, KeyboardInterrupt())
    assert status == 130


def _semper(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env}, input=stdin)


def test_the_real_commands_bad_input_2_failed_operation_1(tmp_path: Path) -> None:
    env = {"SEMPER_HOME": str(tmp_path / "home")}
    bad = _semper("prefs", "set", "no.such.preference", "x", env=env)          # PrefsError: the user's input
    assert bad.returncode == 2 and "unknown preference" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    failed = _semper("card", "info", "--image", str(tmp_path / "none.card"), env=env)   # ReaderError
    assert failed.returncode == 1 and "semper card new" in failed.stderr and "Traceback" not in failed.stderr


# ---- the services: one place turns a SemperError into the JSON refusal ------------------------------
def _serve(routes: list[web.RouteDef]):
    from semper.client.support.http_service import ServiceRunner, make_app
    return ServiceRunner(make_app(routes))


def test_a_handlers_semper_error_becomes_its_classs_refusal() -> None:
    from semper.client.commands import UsageError
    from semper.client.commerce.errors import DealConflict, NoSuchDeal, OfferRefused, ServiceUnavailable
    from semper.client.servers.ca import CaRefusal
    from semper.client.support.http_service import ApiError
    raising = {
        "bad": UsageError("the field 'x' is wrong"),
        "missing": NoSuchDeal("no such deal here"),
        "conflict": DealConflict("this deal has another order"),         # no "already" in the words
        "unprocessable": OfferRefused("the offer is stale"),              # no "refused" in the words
        "unavailable": ServiceUnavailable("too many open deals; try again later"),
        "api": ApiError(429, "queue_full", "too many messages for one exchange"),
        "ca": CaRefusal("registration_key_invalid", "the MAC does not match", 403),
        "device": hw.TokenError("token 'shop' at slot 3 is write-protected"),  # the service's own fault
        "bug": RuntimeError("secret internals"),
    }
    routes = web.RouteTableDef()
    for name, exc in raising.items():
        async def handle(request: web.Request, exc: BaseException = exc) -> web.Response:
            raise exc
        routes.get(f"/{name}")(handle)
    expected = {"bad": (400, "bad_request"), "missing": (404, "unknown_deal"), "conflict": (409, "conflict"),
                "unprocessable": (422, "offer_refused"), "unavailable": (503, "unavailable"),
                "api": (429, "queue_full"), "ca": (403, "registration_key_invalid"),
                "device": (500, "internal"), "bug": (500, "internal")}
    with _serve(list(routes)) as svc, httpx.Client(base_url=svc.url, timeout=10) as http:
        for name, (status, code) in expected.items():
            r = http.get(f"/{name}")
            body = r.json()
            assert (r.status_code, body["error"]) == (status, code), (name, r.status_code, body)
            if status == 500:                       # says nothing internal
                assert "secret" not in body["message"] and "write-protected" not in body["message"]
            else:
                assert body["message"] == str(raising[name])


# ---- the shop: commerce errors carry their own statuses ------------------------------------------------
class _Module:
    """A payment module that only offers itself (the shop's order step needs one; no payment is made)."""

    def __init__(self, ctx: Any) -> None:
        from semper.client.payment.model import ExchangeProperties
        self.properties = ExchangeProperties(externally_verifiable=False, revocable=False, anonymous=True)

    def acceptance(self) -> Any:
        from semper.client.payment.model import Acceptance
        return Acceptance("stub", (978,))


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch) -> Iterator[tuple[Any, Any]]:
    from semper.client.commerce.archive import SharedArchive
    from semper.client.commerce.catalogue import demo_catalogue
    from semper.client.exchange.identity import Identity
    from semper.client.payment.manager import PaymentManager
    from semper.client.payment.module import PartyContext
    from semper.client.servers import shop as shop_module
    from semper.client.servers.shop import Shop
    from semper.client.servers.shop_http import build_app
    from semper.client.support.db import Database
    from semper.client.support.http_service import ServiceRunner
    from semper.client.support.trust import TrustStore
    root_key, root = _root("errors root", days=3)
    trust = TrustStore([root])
    identity = Identity(SoftSigner(*_cert(root_key, root, "seller", "Teapot Shop")))
    payments = PaymentManager(PartyContext(), modules={"stub": _Module})
    s = Shop(name="Teapot Shop", identity=identity, trust=trust, catalogue=demo_catalogue(), payments=payments,
             account="A1", archive=SharedArchive(tmp_path / "evidence.sqlite3"),
             db=Database(f"sqlite:///{tmp_path / 'shop.db'}"))
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", 2)
    monkeypatch.setattr(shop_module, "UNSIGNED_UNPAID_SHARE", 1.0)     # the anonymous orders may fill it here
    with ServiceRunner(build_app(s)) as svc, httpx.Client(base_url=svc.url, timeout=20) as http:
        yield http, trust


def _refusal(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.status_code, r.json()["error"]


def test_the_shop_answers_each_commerce_error_with_its_status(shop, monkeypatch) -> None:
    from semper.client.commerce import documents as docs
    from semper.client.commerce.deal import new_deal_id
    from semper.client.support.verify import verify_statement
    http, trust = shop
    nonce = "n" * 32
    assert _refusal(http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                              "nonce": "short"})) == (400, "refused")
    made = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                     "nonce": nonce, "anonymous": True}).json()
    offer = docs.parse_offer(verify_statement(base64.b64decode(made["offer"]), trust), deal_id=None, nonce=nonce)

    def order(pickup: str, offer: docs.ParsedOffer = offer) -> str:
        body = docs.order_body(offer, payment="stub", payment_label="stub", confirmation_sha256="ab" * 32,
                               scripted=False, action="ORDER_AND_PAY", details=(), form={"pickup": pickup},
                               attributes=offer.attributes)
        return base64.b64encode(docs.canonical(body)).decode()
    deal = made["deal"]
    sent = {"offer": made["offer"], "offer_tag": made["offer_tag"]}        # the stateless offer, sent back
    first = http.post("/deals/order", json={"deal": deal, "order": order("Kiosk C"), **sent})
    assert first.status_code == 200 and first.json()["next"] == "payment", first.text
    terms = first.json()["terms"]
    # the same deal with another order: a conflict with the deal's state, by its class
    assert _refusal(http.post("/deals/order", json={"deal": deal, "order": order("Kiosk A"), **sent})) \
        == (409, "conflict")
    # nothing paid yet: no confirmation, no delivery (the deal is not in that state)
    assert _refusal(http.post("/deals/confirm", json={"deal": deal})) == (409, "conflict")
    assert _refusal(http.post("/deals/delivery", json={"deal": deal})) == (409, "conflict")
    # a payment the shop's payment manager refuses: 422 (well-formed, not acceptable)
    envelope = {"payment_id": terms["payment_id"], "module": "cash-in-an-envelope", "body": {}}
    assert _refusal(http.post("/deals/pay", json={"deal": deal, "envelope": envelope})) == (422, "payment_refused")
    # a deal this shop never offered: not found
    assert _refusal(http.post("/deals/order", json={"deal": new_deal_id(), "order": order("Kiosk C")})) \
        == (404, "unknown_deal")
    # an offer costs no storage: however many are asked for, the one ordered deal is all the shop holds
    for _ in range(3):
        http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                  "nonce": nonce, "anonymous": True}).raise_for_status()
    assert json.loads(http.get("/stats").text)["deals"] == 1
    # the shop is full (two open deals here: both ordered): unavailable for now, not a bad request
    second = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                       "nonce": nonce, "anonymous": True}).json()
    offer2 = docs.parse_offer(verify_statement(base64.b64decode(second["offer"]), trust), deal_id=None, nonce=nonce)
    assert http.post("/deals/order", json={"deal": second["deal"], "order": order("Kiosk C", offer2),
                                           "offer": second["offer"], "offer_tag": second["offer_tag"]}).is_success
    full = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                     "nonce": nonce})
    assert _refusal(full) == (503, "unavailable") and "try again later" in full.json()["message"]
    assert json.loads(http.get("/stats").text)["deals"] == 2
    # room in the shop, but the orders without a certificate hold their share of it (a tenth of 20: both
    # deals here): refused as too many unpaid (paying helps, trying again soon does not), nothing written
    from semper.client.servers import shop as shop_module
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", 20)
    monkeypatch.setattr(shop_module, "UNSIGNED_UNPAID_SHARE", 0.1)
    third = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                      "nonce": nonce, "anonymous": True}).json()
    offer3 = docs.parse_offer(verify_statement(base64.b64decode(third["offer"]), trust), deal_id=None, nonce=nonce)
    refused = http.post("/deals/order", json={"deal": third["deal"], "order": order("Kiosk C", offer3),
                                              "offer": third["offer"], "offer_tag": third["offer_tag"]})
    assert _refusal(refused) == (429, "too_many_unpaid_orders") and "pay one" in refused.json()["message"]
    assert json.loads(http.get("/stats").text)["deals"] == 2
