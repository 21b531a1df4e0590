"""The shop's payment step with its deals in its archive's file: the evidence committed before the note leaves.

From the review of 2026-12-07 of the archive in the deals' transactions (its probes, kept as tests): the
purchase's entries are in the archive once and in order, nothing owed or pending, when the note is handed
out; a refused payment and an error after the note was signed still flush what they archived (the sync
owed to the step's transaction is paid by ``Shop._settle_owed`` when no transaction paid it); a deal paid
over another process's write has its note archived once; the same order taken by two workers at once is
archived once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_stateless_offer import NONCE, _parsed
from test_unpaid_caps import _Paying, _signed_order, pki

from semper.client.commerce.archive import SharedArchive
from semper.client.commerce.catalogue import demo_catalogue
from semper.client.commerce.errors import CommerceError
from semper.client.exchange.identity import Identity
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.payment.sessions import DatabaseSessions
from semper.client.servers.shop import Shop
from semper.client.support.archive import Archive
from semper.client.support.db import Database

pytestmark = pytest.mark.timeout(60)


def _shop(pki: dict[str, Any], folder: Path) -> Shop:
    path = folder / "evidence.sqlite3"
    db = Database(f"sqlite:///{path}")
    return Shop(name="Teapot Shop", identity=Identity(pki["seller"]), trust=pki["trust"], catalogue=demo_catalogue(),
                account="A1", archive=SharedArchive(path, joined=db), db=db,
                payments=PaymentManager(PartyContext(), modules={"stub": _Paying}, sessions=DatabaseSessions(db)))


def _ordered(shop: Shop, pki: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
    with shop.batch():
        answer = shop.order(deal_id, _signed_order(_parsed(shop, der), pki["bob"]), None, der, tag)
    return deal_id, answer


def _on_disk(path: Path) -> list[tuple[str, str]]:
    """The entries another process would read now (committed)."""
    with Archive.open(path) as a:
        assert a.verify().ok
        return [(e.deal_id, e.kind) for e in a.entries()]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = SharedArchive._fsync_log
    monkeypatch.setattr(SharedArchive, "_fsync_log", lambda self: (seen.append("fsync"), real(self))[1])
    return seen


def _pay(shop: Shop, deal_id: str, terms: dict[str, Any], kind: str) -> dict[str, Any]:
    with shop.batch():
        return shop.pay_and_deliver(deal_id, {"payment_id": terms["payment_id"], "module": "stub",
                                              "body": {"kind": kind}})


def test_purchase_entries_once_in_order_and_committed_before_the_note_leaves(pki: Any, tmp_path: Path, spy: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shop = _shop(pki, tmp_path)
    deal_id, answer = _ordered(shop, pki)
    _pay(shop, deal_id, answer["terms"], "hello")
    seen_at_answer: list[Any] = []
    real = Shop._after_payment

    def after(self: Shop, reply: Any, sd: Any, committed: bool) -> Any:
        out = real(self, reply, sd, committed)
        seen_at_answer.append((_on_disk(tmp_path / "evidence.sqlite3"), getattr(self.archive._local, "owed", False),
                               list(self.archive._local.pending or [])))
        return out
    monkeypatch.setattr(Shop, "_after_payment", after)
    done = _pay(shop, deal_id, answer["terms"], "proof")
    assert "delivery" in done
    disk, owed, pending = seen_at_answer[-1]
    kinds = [k for d, k in disk if d == deal_id]
    assert not owed and not pending
    assert kinds.count("statement:delivery") == 1 and kinds[:2] == ["statement:offer", "statement:order"]


def test_payment_refused_and_error_in_settle(pki: Any, tmp_path: Path, spy: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shop = _shop(pki, tmp_path)
    deal_id, answer = _ordered(shop, pki)
    with pytest.raises(CommerceError):
        _pay(shop, deal_id, answer["terms"], "junk")               # PaymentNotAccepted
    kinds = [k for d, k in _on_disk(tmp_path / "evidence.sqlite3") if d == deal_id]
    assert kinds.count("decision") == 1
    # an exception in settle after the note was signed (box["error"])
    real = Shop._confirm_and_ship

    def boom(self: Shop, sd: Any) -> None:
        real(self, sd)
        raise RuntimeError("after the note")
    monkeypatch.setattr(Shop, "_confirm_and_ship", boom)
    n = len(spy)
    with pytest.raises(RuntimeError):
        _pay(shop, deal_id, answer["terms"], "proof")
    kinds = [k for d, k in _on_disk(tmp_path / "evidence.sqlite3") if d == deal_id]
    assert "statement:delivery" in kinds and len(spy) > n
    assert not getattr(shop.archive._local, "owed", False)           # nothing owed left for the next request


def test_paid_over_an_abandon_mark(pki: Any, tmp_path: Path, spy: Any) -> None:
    shop = _shop(pki, tmp_path)
    deal_id, answer = _ordered(shop, pki)
    _pay(shop, deal_id, answer["terms"], "hello")
    shop.store.get(deal_id, fresh=True)                              # remembered at this version
    shop.db.run(lambda tx: tx.execute("UPDATE shop_deals SET version = version + 1 WHERE deal_id = ?", (deal_id,)))
    done = _pay(shop, deal_id, answer["terms"], "proof")
    kinds = [k for d, k in _on_disk(tmp_path / "evidence.sqlite3") if d == deal_id]
    assert "delivery" in done and kinds.count("statement:delivery") == 1
    assert shop.archive.counts["alone"] == 0 and spy == []             # in the deals' transactions, no flush
