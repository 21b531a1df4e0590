"""``semper readers`` and ``semper card ...``: the simulated card, the purse and the PSAM."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..support.money import format_amount, parse_amount, parse_currency
from . import UsageError, card_args, open_scheme, print_json, read_secret, scheme_args


# ---- readers --------------------------------------------------------------------------------------
def cmd_readers(args: argparse.Namespace) -> int:
    from semper.hardware import readers
    if args.watch:
        for ev in readers.monitor(args.watch):
            print(f"{ev.kind:15} {ev.reader} {ev.atr.hex().upper()}".rstrip(), flush=True)
        return 0
    surveyed = readers.survey()
    if not surveyed:
        print("no readers (is a reader plugged in, or 'semper card serve' running with pcscd?)")
        return 0
    for r in surveyed:
        what = "empty"
        if r.card_present:
            if r.problem:
                apps, pad = f"unreadable: {r.problem}", ""
            else:
                apps = ", ".join(a.name.lower() for a in r.applets) or "none known"
                pad = " pin-pad" if r.pin_pad else ""
            what = f"card ATR {r.atr.hex().upper()} applets: {apps}{pad}"
        print(f"{r.name}: {what}")
    return 0


# ---- card -----------------------------------------------------------------------------------------
ARGV_PIN_ENV = "SEMPER_INSECURE_ARGV_PIN"


def _check_argv_secrets(args: argparse.Namespace) -> None:
    """Refuse a PIN or PUK given as an argument: every user of the machine sees argv (``ps``).

    Refused rather than warned about: a warning comes after the exposure and scrolls past in a
    script, while --pin-stdin does the same job safely. Tests and demos that want the old way say
    so with ``SEMPER_INSECURE_ARGV_PIN=1``, and are still warned.
    """
    given = [name for name in ("pin", "puk") if getattr(args, name, None)]
    if not given:
        return
    flags = " and ".join(f"--{n}" for n in given)
    if os.environ.get(ARGV_PIN_ENV) != "1":
        raise UsageError(f"{flags} on the command line would be visible to every user in the process list; "
                         f"pass --pin-stdin (or let semper ask), or set {ARGV_PIN_ENV}=1 for a test or demo")
    print(f"warning: {flags} taken from the command line ({ARGV_PIN_ENV}=1): visible in the process list",
          file=sys.stderr)


def cmd_card_new(args: argparse.Namespace) -> int:
    from semper.hardware.simulator import card_key_folder

    from ..support.paths import semper_home
    from ..support.personalisation import CardProfile, PersonalisationError, personalise_psam, personalise_purse_card
    from ..support.secret_files import write_secret
    _check_argv_secrets(args)
    try:
        currency = parse_currency(args.currency)
        if args.psam:
            psam_id = bytes.fromhex(args.psam_id) if args.psam_id else None
            if psam_id is not None and len(psam_id) != 8:
                raise UsageError("--psam-id must be 16 hex digits")
            with open_scheme(args) as scheme:
                pid = personalise_psam(args.image, scheme, psam_id=psam_id, currency=currency, sync=not args.no_sync)
            print(f"PSAM {pid.hex().upper()} issued into {args.image}; its sealing key is in {card_key_folder()}")
            return 0
        pin = args.pin.encode() if args.pin else read_secret("new PIN", args.pin_stdin, confirm=True)
        puk = args.puk.encode() if args.puk else read_secret("new PUK (8 digits)", args.pin_stdin, confirm=True)
        try:
            number = bytes.fromhex(args.card_number) if args.card_number else None
        except ValueError:
            raise UsageError("--card-number must be 16 hex digits") from None
        profile = CardProfile(pin, puk, number, currency, parse_amount(args.max_balance))
        profile.check()                                  # bad input is refused before the scheme's token is opened
        with open_scheme(args) as scheme:
            issued = personalise_purse_card(args.image, scheme, profile, sync=not args.no_sync)
    except PersonalisationError as e:
        raise UsageError(str(e)) from None
    admin = semper_home() / "cards" / f"{issued.card_id}.piv-admin-key"
    write_secret(admin, issued.piv_admin_key.hex() + "\n")
    print(f"card {issued.card_id} issued into {args.image}: purse (max balance "
          f"{format_amount(profile.max_balance, profile.currency)}) and PIV keys 9A, 9C; "
          f"PIV management key in {admin}; the image's sealing key is in {card_key_folder()} "
          "(the card cannot be opened without it)")
    return 0


def cmd_card_serve(args: argparse.Namespace) -> int:
    from semper.card_applet_sim.serve import run
    images = [args.image] + ([args.psam_image] if args.psam_image else [])
    return run(images, args.host, args.port, sync=not args.no_sync)


def _purse_dict(info) -> dict:  # type: ignore[no-untyped-def]
    return {"card_number": info.card_id, "balance": format_amount(info.balance, info.currency),
            "max_balance": format_amount(info.max_balance, info.currency), "load_counter": info.load_counter,
            "debit_counter": info.debit_counter, "pin_tries_left": info.pin_tries, "puk_tries_left": info.puk_tries,
            "load_pending": info.load_pending}


def cmd_card_info(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    with cards.connection(AID.PURSE if not args.psam else AID.PSAM, args.reader, args.image) as conn:
        if args.psam:
            from semper.hardware.psam import PsamSession
            p = PsamSession(conn).info()
            out = {"psam_id": p.psam_id.hex().upper(), "sequence": p.sequence, "batch": p.batch_number,
                   "batch_count": p.batch_count, "batch_total": format_amount(p.batch_total, p.currency),
                   "pending_requests": p.pending, "lifetime_total": format_amount(p.lifetime_total, p.currency)}
        else:
            from semper.hardware.purse import PurseSession
            out = {"reader": conn.reader, "atr": conn.atr.hex().upper(), **_purse_dict(PurseSession(conn).info())}
    if args.json:
        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k.replace('_', ' '):>16}: {v}")
    return 0


def cmd_card_load(args: argparse.Namespace) -> int:
    from semper.hardware import cards

    from ..payment import card_purse
    amount = parse_amount(args.amount)
    with open_scheme(args) as issuer, cards.purse(args.reader, args.image) as purse:
        if purse.has_pin_pad():
            print("enter the PIN on the reader's PIN pad", flush=True)
            purse.verify_pin_on_pad()
            pin = None
        else:
            pin = read_secret("card PIN", args.pin_stdin)
        result = card_purse.load(purse, issuer, amount, pin)
    c = result.confirmation
    print(f"loaded {format_amount(c.amount, c.currency)}; balance {format_amount(c.balance, c.currency)} "
          f"(load #{c.load_counter})")
    return 0


def cmd_card_pay(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID

    from ..payment import card_purse
    amount = parse_amount(args.amount)
    with cards.connection(AID.PURSE, args.reader, args.image) as buyer_conn:
        with cards.connection(AID.PSAM, args.psam_reader, args.psam_image, exclude=(buyer_conn.reader,)) as psam_conn:
            from semper.hardware.psam import PsamSession
            from semper.hardware.purse import PurseSession
            purse, psam = PurseSession(buyer_conn), PsamSession(psam_conn)
            result = card_purse.purchase(purse, psam, amount)
            balance = purse.info()
    p = result.proof
    print(f"paid {format_amount(p.amount, p.currency)} to PSAM {p.psam_id.hex().upper()} (debit #{p.debit_counter}, "
          f"batch {result.batch_number} entry {result.batch_index}); balance "
          f"{format_amount(balance.balance, balance.currency)}")
    return 0


def cmd_card_log(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    with cards.purse(args.reader, args.image) as purse:
        currency = purse.info().currency
        entries = purse.log()
    if not entries:
        print("the card's log is empty")
    for e in entries:
        print(f"{e.kind:5} #{e.counter:<5} {format_amount(e.amount, currency):>12}  balance after "
              f"{format_amount(e.balance_after, currency)}")
    return 0


def cmd_card_pin(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    with cards.purse(args.reader, args.image) as purse:
        if args.action == "change":
            old = read_secret("current PIN", args.pin_stdin)
            new = read_secret("new PIN", args.pin_stdin, confirm=not args.pin_stdin)
            purse.change_pin(old, new)
            print("PIN changed")
        else:
            puk = read_secret("PUK", args.pin_stdin)
            new = read_secret("new PIN", args.pin_stdin, confirm=not args.pin_stdin)
            purse.unblock_pin(puk, new)
            print("PIN unblocked and set")
    return 0


def cmd_card_batch(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    with cards.psam(args.psam_reader, args.psam_image) as psam:
        header, _signed = psam.close_batch()
    print(f"batch {header.batch_number} closed: {header.count} debits, {format_amount(header.total, header.currency)}")
    return 0




def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("readers", help="list PC/SC readers and the card in each")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="print insertion/removal events for a while")
    p.set_defaults(fn=cmd_readers)

    card = groups["card"]
    p = card.add_parser("new", help="personalise a new card image (keys made on the card)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--psam", action="store_true", help="make a seller's PSAM instead of a buyer card")
    p.add_argument("--psam-id", help="PSAM id, 16 hex digits (default: random)")
    p.add_argument("--pin", help=f"initial PIN, 4-8 digits (default: ask); refused unless {ARGV_PIN_ENV}=1, "
                                 "since argv is visible in the process list")
    p.add_argument("--puk", help=f"PUK, 8 digits (default: ask); refused unless {ARGV_PIN_ENV}=1")
    p.add_argument("--pin-stdin", action="store_true", help="read PIN and PUK from standard input")
    p.add_argument("--card-number", help="16 hex digits (default: random)")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--max-balance", default="200.00")
    p.add_argument("--no-sync", action="store_true", help="no fsync per commit (faster, not power-safe)")
    scheme_args(p)
    p.set_defaults(fn=cmd_card_new)

    p = card.add_parser("serve", help="put card images into pcscd's virtual readers (vpcd)")
    p.add_argument("--image", type=Path, required=True, help="buyer card, reader 'Virtual PCD 00 00'")
    p.add_argument("--psam-image", type=Path, help="PSAM, reader 'Virtual PCD 00 01'")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=35963)
    p.add_argument("--no-sync", action="store_true")
    p.set_defaults(fn=cmd_card_serve)

    p = card.add_parser("info", help="show a card (purse, or PSAM with --psam)")
    card_args(p)
    p.add_argument("--psam", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_card_info)

    p = card.add_parser("load", help="load the purse from the issuer (needs the PIN)")
    p.add_argument("amount")
    card_args(p)
    p.add_argument("--pin-stdin", action="store_true", help="read the card PIN from standard input")
    scheme_args(p)
    p.set_defaults(fn=cmd_card_load)

    p = card.add_parser("pay", help="pay from the purse through a PSAM")
    p.add_argument("amount")
    card_args(p, psam=True)
    p.set_defaults(fn=cmd_card_pay)

    p = card.add_parser("log", help="the purse's on-card transaction log")
    card_args(p)
    p.set_defaults(fn=cmd_card_log)

    p = card.add_parser("pin", help="change or unblock the card PIN")
    p.add_argument("action", choices=["change", "unblock"])
    card_args(p)
    p.add_argument("--pin-stdin", action="store_true", help="read PIN/PUK lines from standard input")
    p.set_defaults(fn=cmd_card_pin)

    p = card.add_parser("close-batch", help="close the PSAM's batch for clearing")
    p.add_argument("--psam-reader")
    p.add_argument("--psam-image", type=Path)
    p.set_defaults(fn=cmd_card_batch)

