"""``semper deals`` and ``semper deal show|resume``: the buyer's deals as the evidence archive records them.

``deals`` lists every deal with its date, seller, amount, payment and status, read from the archive
(the offer the seller signed, the payment record, the decisions taken after each step); with
``--card`` it reads the purse's on-card log and links each debit to the deal it paid (by the card's
debit counter in the deal's payment proof). ``deal resume`` finishes fair exchanges left open (the
third party was unreachable, the card went away, the client stopped): the buyer's exchange party
asks the third party again, through the TINGUIN for the PIN, exactly as after a crash.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..support.money import format_amount
from . import UsageError, card_args, emit, existing_file, json_arg

if TYPE_CHECKING:
    from ..support.archive import Archive


def _archive(path: Path | None) -> Archive:
    from ..support.archive import Archive, NoArchive
    from .archive import default_db
    try:
        return Archive.open(path or default_db())
    except NoArchive as e:
        raise UsageError(f"{e} (no deals yet?)") from None


def _cn(cert: Any) -> str:
    from cryptography.x509.oid import NameOID
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _status(entries: list[Any]) -> str:
    """The deal's standing from its last decisions: satisfied, dispute, refused, declined or open."""
    verdicts: list[str] = []
    for e in entries:
        if e.kind == "decision":
            verdicts.append(json.loads(e.content).get("verdict", "?"))
        elif e.kind == "decisions":
            verdicts += [d.get("verdict", "?") for d in json.loads(e.content)]
    for worst in ("dispute", "refused", "declined"):
        if worst in verdicts:
            return worst
    exchange = [json.loads(e.content) for e in entries if e.kind == "exchange"]
    if exchange and exchange[-1].get("status") in ("pending", "failed"):
        return f"exchange {exchange[-1]['status']}"
    return "satisfied" if verdicts else "open"


def describe(deal_id: str, entries: list[Any]) -> dict[str, Any] | None:
    """One deal's row, or None for archive entries that are not a deal (an exchange's own records)."""
    from semper.hardware.purse_records import DEBIT_PROOF, DebitRecord

    from ..support.cms import parse_statement
    offer = next((e for e in entries if e.kind == "statement:offer"), None)
    if offer is None and not any(e.kind.startswith(("order", "statement:order", "decision")) for e in entries):
        return None
    row: dict[str, Any] = {"deal": deal_id, "date": entries[0].created_at, "seller": None, "workflow": None,
                           "amount": None, "items": [], "payment": None, "card_debit": None,
                           "status": _status(entries), "entries": len(entries)}
    if offer is not None:
        try:
            st = parse_statement(offer.content)
            body = st.body
            row.update(seller=_cn(st.signer_cert), workflow=body.get("workflow"),
                       amount=format_amount(int(body.get("total", 0)), int(body.get("currency", 978))),
                       items=[f"{i.get('sku')}" + (f" x{i.get('quantity')}" if i.get("quantity", 1) != 1 else "")
                              for i in body.get("items", [])])
        except Exception:                      # an unreadable offer is shown as such, not a crash
            row["seller"] = "(offer unreadable)"
    for e in entries:
        if e.kind != "payment":
            continue
        try:
            record = json.loads(e.content)["record"]
            row["payment"] = record.get("module")
            proof = record.get("evidence", {}).get("proof")
            if record.get("module") == "card-purse" and isinstance(proof, str):
                d = DebitRecord.decode(base64.b64decode(proof), DEBIT_PROOF)
                row["card_debit"] = {"card": d.card_number.hex().upper(), "counter": d.debit_counter}
        except (ValueError, KeyError, TypeError):
            pass
    return row


def deal_rows(path: Path | None) -> list[dict[str, Any]]:
    with _archive(path) as archive:
        rows = []
        for deal_id, _n in archive.deals():
            row = describe(deal_id, archive.entries(deal_id))
            if row is not None:
                rows.append(row)
    return rows


def _card_log(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from semper.hardware import cards

    from .card import log_rows
    with cards.purse(args.reader, args.image, read_only=True) as purse:
        card = purse.info().card_id
        lines = log_rows(purse)
    by_counter = {r["card_debit"]["counter"]: r["deal"] for r in rows
                  if r["card_debit"] and r["card_debit"]["card"] == card}
    for line in lines:
        line["deal"] = by_counter.get(line["counter"]) if line["kind"] == "debit" else None
    return lines


def cmd_deals(args: argparse.Namespace) -> int:
    rows = deal_rows(args.db)
    if args.ids:
        # one write: a script's `semper deals --ids | head -n 1` must not find the pipe closed halfway
        # (with PYTHONUNBUFFERED every print would be a write of its own, racing head's exit)
        sys.stdout.write("".join(f"{r['deal']}\n" for r in rows))
        sys.stdout.flush()
        return 0
    log = _card_log(args, rows) if args.card else None
    if args.json:
        emit(args, rows if log is None else {"deals": rows, "card_log": log})
        return 0

    def text() -> str:
        if not rows:
            return "no deals in the archive yet"
        out = []
        for r in rows:
            paid = f" with {r['payment']}" if r["payment"] else ""
            debit = f" (card debit #{r['card_debit']['counter']})" if r["card_debit"] else ""
            out.append(f"{r['date'][:19].replace('T', ' ')}  {r['deal']}  {r['status']:<11} "
                       f"{r['amount'] or '-':>12}{paid}{debit}  {r['workflow'] or '?'} from {r['seller'] or '?'}: "
                       f"{', '.join(r['items']) or '-'}")
        if log is not None:
            out.append("the card's purse log (newest first):")
            for line in log:
                link = f"deal {line['deal']}" if line["deal"] else ("" if line["kind"] == "load" else
                                                                      "no deal in this archive")
                out.append(f"  {line['kind']:5} #{line['counter']:<5} {line['amount']:>12}  balance after "
                           f"{line['balance_after']}  {link}".rstrip())
        return "\n".join(out)
    emit(args, rows, text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _archive(args.db) as archive:
        entries = archive.entries(args.deal)
        if not entries:
            raise UsageError(f"no deal {args.deal} in {archive.path} ('semper deals' lists them)")
        row = describe(args.deal, entries) or {"deal": args.deal}
        row["evidence"] = [{"entry": e.index, "kind": e.kind, "at": e.created_at, "bytes": len(e.content)}
                           for e in entries]
    emit(args, row, lambda: "\n".join([f"deal {row['deal']}: {row.get('status', '?')}, {row.get('amount') or '-'} "
                                       f"{row.get('workflow') or ''} from {row.get('seller') or '?'}"]
                                      + [f"  entry {e['entry']:>4}  {e['at'][:19]}  {e['kind']}"
                                         for e in row["evidence"]]))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from ..commerce.setup import open_buyer
    from ..tinguin.api import Script, run_deal
    from .buy import buyer_settings
    with _archive(args.db) as archive:
        if args.deal is not None and not archive.entries(args.deal):
            raise UsageError(f"no deal {args.deal} in {archive.path} ('semper deals' lists them)")
        wanted = None
        if args.deal is not None:
            wanted = {json.loads(e.content)["xid"] for e in archive.entries(args.deal) if e.kind == "exchange"}
            if not wanted:
                raise UsageError(f"deal {args.deal} has no fair exchange to resume; a dispute over a mail order is "
                                 f"for the judge: semper archive export {args.deal} --out deal.zip; semper judge "
                                 "deal.zip --ca ROOT")
    from ..support import prefs
    # resuming talks to the third party (and a peer's exchange mailbox), never to a shop's front: the
    # buyer's client still wants a shop URL, so it gets the preferred one or a placeholder it never uses
    settings = buyer_settings(args, workflow="information", archive=args.db,
                              shop_url=prefs.load().get("servers.shop") or "https://127.0.0.1")
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not interactive and args.script is None:
        raise UsageError("no terminal for the TINGUIN: run it in a terminal, or pass --script PIN_FILE")
    script = Script(pin=args.script.read_text().strip()) if args.script else Script()

    def workflow(ui: Any) -> list[Any]:
        from semper.hardware import cards
        from semper.hardware.iso7816 import AID
        with cards.connection(AID.PURSE, settings.reader, args.image) as conn:
            session = open_buyer(settings.config, ui, conn)
            try:
                if session.buyer.exchange is None:
                    raise UsageError("resuming an exchange needs the third party and your mailbox's TLS identity")
                return session.buyer.exchange.recover()
            finally:
                session.close()
    outcomes = run_deal(workflow, interactive=interactive, script=script,
                        say=lambda line: print(line, file=sys.stderr, flush=True))
    rows = [{"exchange": o.xid, "status": o.status, "reason": o.reason} for o in outcomes
            if wanted is None or o.xid in wanted]
    emit(args, rows, lambda: "\n".join(f"exchange {r['exchange']}: {r['status']} ({r['reason']})" for r in rows)
         or "nothing was left open")
    return 0 if all(r["status"] == "completed" for r in rows) else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, help="your evidence archive (default: evidence.sqlite3 in the semper folder)")

    p = sub.add_parser("deals", help="your deals: date, seller, amount, payment, status (--card: the purse log "
                                     "linked to them)")
    db_arg(p)
    p.add_argument("--card", action="store_true", help="read the card's purse log and link its debits to the deals")
    card_args(p)
    p.add_argument("--ids", action="store_true", help="print only the deal ids, oldest first (for scripts)")
    json_arg(p)
    p.set_defaults(fn=cmd_deals)

    deal = sub.add_parser("deal", help="one deal: show its evidence, resume its exchange").add_subparsers(
        dest="deal_command", required=True)
    p = deal.add_parser("show", help="a deal's entries in the evidence archive")
    p.add_argument("deal")
    db_arg(p)
    json_arg(p)
    p.set_defaults(fn=cmd_show)

    p = deal.add_parser("resume", help="finish fair exchanges left open (pending at the third party, interrupted)")
    p.add_argument("deal", nargs="?", help="the deal (default: every exchange left open)")
    db_arg(p)
    card_args(p)
    p.add_argument("--ca-root", type=existing_file, help="the CA root you trust (default: prefs trust.ca_root)")
    p.add_argument("--purse-root", type=existing_file, help="the purse scheme root (default: prefs trust.purse_root)")
    p.add_argument("--ttp", help="the third party's URL (default: prefs servers.ttp)")
    p.add_argument("--tls-dir", type=Path, help="your mailbox's TLS key and chain (default: $SEMPER_HOME/client-tls)")
    p.add_argument("--script", type=existing_file, metavar="PIN_FILE",
                   help="no person at a terminal: a scripted user answers the TINGUIN, typing this PIN")
    json_arg(p)
    p.set_defaults(fn=cmd_resume)
