"""``semper readers`` and ``semper card ...``: the card, the purse and the PSAM.

Two purse schemes meet here. A card issued against the bank (``card new --issuer-cert BANK.pem``)
takes load commands only from the bank's issuer key: ``card load --bank`` loads it from the holder's
account, over HTTPS, the request signed on the card. Without ``--issuer-cert`` the card takes load
commands from the scheme's *local test issuer*, and ``card load`` without ``--bank`` makes money
from that key: a test scheme for development and tests, never a marketplace's money.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semper.hardware import errors as hw_errors

from ..support.money import format_amount, parse_amount, parse_currency
from . import (
    CommandFailed,
    UsageError,
    amount,
    card_args,
    card_image,
    emit,
    existing_file,
    hex_id,
    json_arg,
    new_file,
    note,
    open_scheme,
    port,
    scheme_args,
)
from .cardparty import bank_args, bank_party, check_pin_format, read_card_pin

if TYPE_CHECKING:
    from cryptography import x509

    from semper.hardware.purse import PurseInfo, PurseSession
    from semper.hardware.transport import Connection

TEST_SCHEME = ("test scheme: loads come from the purse scheme's local test issuer key, not from a bank; for a "
               "card that loads from the bank pass --issuer-cert (the bank's bank.pem)")


# ---- readers --------------------------------------------------------------------------------------
def cmd_readers(args: argparse.Namespace) -> int:
    from semper.hardware import readers
    if args.watch:
        for ev in readers.monitor(args.watch):
            if args.json:
                print_line = {"event": ev.kind, "reader": ev.reader, "atr": ev.atr.hex().upper()}
                import json
                print(json.dumps(print_line), flush=True)
            else:
                print(f"{ev.kind:15} {ev.reader} {ev.atr.hex().upper()}".rstrip(), flush=True)
        return 0
    rows: list[dict[str, Any]] = []
    for r in readers.survey():
        row: dict[str, Any] = {"reader": r.name, "card": r.card_present}
        if r.card_present:
            row.update(atr=r.atr.hex().upper(), applets=[a.name.lower() for a in r.applets], pin_pad=r.pin_pad)
            if r.problem:
                row["problem"] = r.problem
        rows.append(row)

    def text() -> str:
        if not rows:
            return "no readers (is a reader plugged in, or 'semper card serve' running with pcscd?)"
        out = []
        for r in rows:
            if not r["card"]:
                out.append(f"{r['reader']}: empty")
            elif "problem" in r:
                out.append(f"{r['reader']}: card ATR {r['atr']} unreadable: {r['problem']}")
            else:
                out.append(f"{r['reader']}: card ATR {r['atr']} applets: {', '.join(r['applets']) or 'none known'}"
                           + (" pin-pad" if r.get("pin_pad") else ""))
        return "\n".join(out)
    emit(args, rows, text)
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
    note(f"warning: {flags} taken from the command line ({ARGV_PIN_ENV}=1): visible in the process list")


def _same_file(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and os.path.abspath(a) == os.path.abspath(b) or (
        a is not None and b is not None and a.exists() and b.exists() and os.path.samefile(a, b))


def _issuer_point(path: Path, scheme: Any) -> bytes:
    """The load key a bank-issued card accepts: the bank's issuer certificate, checked against the scheme."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from ..support import pki
    from ..support.scheme import ROLE_ISSUER
    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError(f"--issuer-cert {path} is not an X.509 certificate (the bank's bank.pem)") from None
    try:
        cert.verify_directly_issued_by(scheme.root_cert)
        roles = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise UsageError(f"--issuer-cert {path} is not an issuer certificate of this purse scheme ({scheme.folder}); "
                         "a card would refuse every load command from that key") from None
    if ROLE_ISSUER not in roles:
        raise UsageError(f"--issuer-cert {path} is certified by the scheme, but not as a purse issuer")
    return pki.point_of(cert)


def cmd_card_new(args: argparse.Namespace) -> int:
    from semper.hardware.simulator import card_key_folder

    from ..support.paths import semper_home
    from ..support.personalisation import CardProfile, PersonalisationError, personalise_psam, personalise_purse_card
    from ..support.secret_files import write_secret
    _check_argv_secrets(args)
    image: Path = args.image
    if image.exists():
        raise UsageError(f"{image} already exists; choose another path or delete it first")
    if not image.absolute().parent.is_dir():
        raise UsageError(f"the folder {image.absolute().parent} does not exist; make it first (semper card new does "
                         "not create folders)")
    currency = parse_currency(args.currency)
    try:
        if args.psam:
            with open_scheme(args) as scheme:
                pid = personalise_psam(image, scheme, psam_id=args.psam_id, currency=currency, sync=not args.no_sync)
            emit(args, {"psam": pid.hex().upper(), "image": str(image), "currency": currency,
                        "sealing_keys": str(card_key_folder())},
                 f"PSAM {pid.hex().upper()} issued into {image}; its sealing key is in {card_key_folder()}")
            return 0
        pin = check_pin_format(args.pin.encode()) if args.pin else read_card_pin("new PIN", args.pin_stdin,
                                                                                 confirm=True)
        puk = check_pin_format(args.puk.encode(), "PUK") if args.puk else read_card_pin(
            "new PUK (8 digits)", args.pin_stdin, "PUK", confirm=True)
        profile = CardProfile(pin, puk, args.card_number, currency, parse_amount(args.max_balance, currency))
        profile.check()                                  # bad input is refused before the scheme's token is opened
        with open_scheme(args) as scheme:
            point = _issuer_point(args.issuer_cert, scheme) if args.issuer_cert else None
            issued = personalise_purse_card(image, scheme, profile, sync=not args.no_sync, issuer_point=point)
    except PersonalisationError as e:
        raise UsageError(str(e)) from None
    admin = semper_home() / "cards" / f"{issued.card_id}.piv-admin-key"
    write_secret(admin, issued.piv_admin_key.hex() + "\n")
    issuer = f"the bank of {args.issuer_cert}" if args.issuer_cert else "the local test issuer (test scheme)"
    if not args.issuer_cert:
        note(f"note: {TEST_SCHEME}")
    emit(args, {"card": issued.card_id, "image": str(image), "max_balance": format_amount(profile.max_balance,
                currency), "issuer": str(args.issuer_cert) if args.issuer_cert else "local test issuer",
                "piv_admin_key": str(admin), "sealing_keys": str(card_key_folder())},
         f"card {issued.card_id} issued into {image}: purse (max balance "
         f"{format_amount(profile.max_balance, profile.currency)}, loads from {issuer}) and PIV keys 9A, 9C, 9D; "
         f"PIV management key in {admin}; the image's sealing key is in {card_key_folder()} "
         "(the card cannot be opened without it)")
    return 0


def cmd_card_serve(args: argparse.Namespace) -> int:
    from semper.card_applet_sim.serve import run
    if _same_file(args.image, args.psam_image):
        raise UsageError("the buyer card and the PSAM are the same image; a card image is one card (semper card new "
                         "--psam makes a PSAM)")
    for image in [args.image] + ([args.psam_image] if args.psam_image else []):
        if not image.exists():
            raise UsageError(f"no card image at {image}; create one with 'semper card new --image {image}'")
    images = [args.image] + ([args.psam_image] if args.psam_image else [])
    return run(images, args.host, args.port, sync=not args.no_sync)


def _purse_dict(info: PurseInfo) -> dict[str, Any]:
    return {"card_number": info.card_id, "balance": format_amount(info.balance, info.currency),
            "max_balance": format_amount(info.max_balance, info.currency), "load_counter": info.load_counter,
            "debit_counter": info.debit_counter, "pin_tries_left": info.pin_tries, "puk_tries_left": info.puk_tries,
            "load_pending": info.load_pending}


def _cert_summary(der: bytes) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    algorithm = f"ECC{key.curve.name.upper()}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    return {"algorithm": algorithm.replace("SECP256R1", "P256"), "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(), "serial": f"{cert.serial_number:X}",
            "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "expired": cert.not_valid_after_utc < dt.datetime.now(dt.UTC),
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}


PIV_SLOTS = {"9a": ("AUTHENTICATION", "authentication"), "9c": ("SIGNATURE", "digital signature"),
             "9d": ("KEY_MANAGEMENT", "key management"), "9e": ("CARD_AUTHENTICATION", "card authentication")}


def _piv_dict(conn: Connection) -> dict[str, Any] | None:
    """What ``ykman piv info`` shows: PIN tries and each slot's certificate (None: the card has no PIV)."""
    from semper.hardware.piv import PivSession, Slot
    try:
        piv = PivSession(conn)
    except hw_errors.NotFoundError:
        return None
    status = piv.pin_status()
    slots: dict[str, Any] = {}
    for name, (member, purpose) in PIV_SLOTS.items():
        try:
            slots[name] = {"purpose": purpose, **_cert_summary(piv.certificate(Slot[member]))}
        except hw_errors.NotFoundError:
            slots[name] = {"purpose": purpose, "empty": True}
        except ValueError:
            slots[name] = {"purpose": purpose, "problem": "the certificate is not readable X.509"}
    return {"pin_tries_left": status.tries_left, "pin_blocked": status.blocked, "slots": slots}


def _info_text(out: dict[str, Any]) -> str:
    lines = []
    flat = {k: v for k, v in out.items() if k != "piv"}
    width = max(len(k) for k in flat) if flat else 0
    lines += [f"{k.replace('_', ' '):>{width}}: {v}" for k, v in flat.items()]
    piv = out.get("piv")
    if piv:
        lines.append(f"PIV: PIN tries left {piv['pin_tries_left']}" + (" (blocked)" if piv["pin_blocked"] else ""))
        for slot, s in piv["slots"].items():
            if s.get("empty"):
                lines.append(f"  slot {slot.upper()} ({s['purpose']}): empty")
                continue
            if "problem" in s:
                lines.append(f"  slot {slot.upper()} ({s['purpose']}): {s['problem']}")
                continue
            lines += [f"  slot {slot.upper()} ({s['purpose']}):",
                      f"    algorithm:   {s['algorithm']}", f"    subject:     {s['subject']}",
                      f"    issuer:      {s['issuer']}", f"    serial:      {s['serial']}",
                      f"    not before:  {s['not_before']}",
                      f"    not after:   {s['not_after']}" + (" (EXPIRED)" if s["expired"] else ""),
                      f"    fingerprint: {s['sha256']}"]
    return "\n".join(lines)


def image_notes(conn: Any) -> None:
    """Say what opening a card image found (an interrupted write left as it is, an open file mode)."""
    for line in getattr(conn, "notes", lambda: [])():
        note(f"note: {line}")


def cmd_card_info(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    with cards.connection(AID.PURSE if not args.psam else AID.PSAM, args.reader, args.image, read_only=True) as conn:
        image_notes(conn)
        if args.psam:
            from semper.hardware.psam import PsamSession
            p = PsamSession(conn).info()
            out: dict[str, Any] = {
                "psam_id": p.psam_id.hex().upper(), "sequence": p.sequence, "batch": p.batch_number,
                "batch_count": p.batch_count, "batch_total": format_amount(p.batch_total, p.currency),
                "pending_requests": p.pending, "lifetime_total": format_amount(p.lifetime_total, p.currency)}
        else:
            from semper.hardware.purse import PurseSession
            out = {"reader": conn.reader, "atr": conn.atr.hex().upper(), **_purse_dict(PurseSession(conn).info())}
            piv = _piv_dict(conn)
            if piv is not None:
                out["piv"] = piv
    emit(args, out, lambda: _info_text(out))
    return 0


def cmd_card_cert(args: argparse.Namespace) -> int:
    """Export a certificate from the card: the purse's or PSAM's (for 'semper bank link-card/link-psam') or
    a PIV slot's (for 'semper bank open-account --owner-cert')."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    slot = args.slot.lower()
    aid = {"purse": AID.PURSE, "psam": AID.PSAM}.get(slot, AID.PIV)
    image = args.psam_image if slot == "psam" and args.psam_image else args.image
    reader = args.psam_reader if slot == "psam" and args.psam_reader else args.reader
    with cards.connection(aid, reader, image, read_only=True) as conn:
        image_notes(conn)
        if slot == "purse":
            from semper.hardware.purse import PurseSession
            der = PurseSession(conn).certificate()
        elif slot == "psam":
            from semper.hardware.psam import PsamSession
            der = PsamSession(conn).certificate()
        else:
            from semper.hardware.piv import PivSession, Slot
            try:
                der = PivSession(conn).certificate(Slot[PIV_SLOTS[slot][0]])
            except hw_errors.NotFoundError:
                raise CommandFailed(f"PIV slot {slot.upper()} of this card holds no certificate") from None
    cert = x509.load_der_x509_certificate(der)
    pem = cert.public_bytes(Encoding.PEM).decode()
    if args.out is not None:
        args.out.write_bytes(der if args.der else pem.encode())
        note(f"wrote the {slot} certificate ({cert.subject.rfc4514_string()}) to {args.out}")
    if args.json:
        emit(args, {"slot": slot, **_cert_summary(der), "pem": pem, "file": str(args.out) if args.out else None})
    elif args.out is None:
        if args.der:
            sys.stdout.buffer.write(der)
        else:
            print(pem, end="")
    return 0


def _fits(purse: PurseSession, amount: int) -> None:
    """Refuse a load the card would refuse as over its maximum, saying how much still fits."""
    info = purse.info()
    room = info.max_balance - info.balance
    if amount > room:
        c = info.currency
        raise CommandFailed(f"loading {format_amount(amount, c)} would take the purse over its maximum of "
                            f"{format_amount(info.max_balance, c)}: it holds {format_amount(info.balance, c)}, so at "
                            f"most {format_amount(max(room, 0), c)} more fits")


def cmd_card_load(args: argparse.Namespace) -> int:
    from ..support import prefs
    if not args.test_issuer and (args.bank or args.bank_tls_root or args.account or prefs.load().get("servers.bank")):
        return _load_from_bank(args)
    from semper.hardware import cards

    from ..payment import card_purse
    from ..payment.modules.purse import NotAuthenticated
    with cards.purse(args.reader, args.image) as purse:
        info = purse.info()
        amount = parse_amount(args.amount, info.currency)
        _fits(purse, amount)
        if purse.has_pin_pad():
            note("enter the PIN on the reader's PIN pad")
            purse.verify_pin_on_pad()
            pin = None
        else:
            pin = read_card_pin("card PIN", args.pin_stdin)
        with open_scheme(args) as issuer:
            try:
                result = card_purse.load(purse, issuer, amount, pin)
            except NotAuthenticated:
                raise CommandFailed("the card refused the local test issuer's load command: this card loads from its "
                                    "bank (semper card load AMOUNT --bank URL ...)") from None
    c = result.confirmation
    emit(args, {"loaded": format_amount(c.amount, c.currency), "balance": format_amount(c.balance, c.currency),
                "load_counter": c.load_counter, "issuer": "local test issuer"},
         f"loaded {format_amount(c.amount, c.currency)} from the test scheme's local issuer (money made from the "
         f"scheme's key: a marketplace's cards load from the bank with --bank); balance "
         f"{format_amount(c.balance, c.currency)} (load #{c.load_counter})")
    return 0


def _load_from_bank(args: argparse.Namespace) -> int:
    from ..payment.errors import InstrumentError
    from ..payment.modules.purse import PurseModule
    with bank_party(args) as ctx:
        amount = parse_amount(args.amount, ctx.currency)
        _fits(ctx.purse, amount)
        try:
            loaded = PurseModule(ctx).load(amount)
        except InstrumentError as e:
            if "maximum balance" in str(e):
                _fits(ctx.purse, amount)
            raise
    emit(args, {"loaded": format_amount(loaded["amount"], ctx.currency),
                "balance": format_amount(loaded["balance"], ctx.currency), "load_counter": loaded["counter"],
                "account": ctx.account},
         f"loaded {format_amount(loaded['amount'], ctx.currency)} from account {ctx.account}; balance "
         f"{format_amount(loaded['balance'], ctx.currency)} (load #{loaded['counter']})")
    return 0


def _purse_root(args: argparse.Namespace) -> x509.Certificate:
    """The purse scheme root the PSAM's side checks the card's hello against: ``--purse-root``, else prefs
    ``trust.purse_root``, else the root of the scheme in ``$SEMPER_HOME/scheme`` (the one ``card new`` issues
    from). Without one the payee refuses the hello (``modules/purse.py``: it fails closed), so it is asked
    for here, before any card is opened."""
    from cryptography import x509

    from ..support import prefs
    from ..support.paths import semper_home
    from ..support.scheme import ROOT_CERT
    path = args.purse_root
    if path is None:
        value = prefs.load().get("trust.purse_root")
        path = Path(value) if value else semper_home() / "scheme" / ROOT_CERT
        if not path.is_file():
            raise UsageError(f"which purse scheme's cards does the PSAM take? no scheme root at {path}: pass "
                             "--purse-root FILE (the scheme's root-cert.pem), or: semper prefs set trust.purse_root "
                             "FILE")
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"the purse scheme root {path} is not a readable PEM certificate ({e})") from None


def cmd_card_pay(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID

    from ..payment import card_purse
    if _same_file(args.image, args.psam_image):
        raise UsageError("--image and --psam-image are the same file; the buyer card and the PSAM are two cards")
    if args.image is not None and args.psam_image is None and args.psam_reader is None:
        raise UsageError("which PSAM takes the payment? the buyer card is an image (--image), so name the PSAM too: "
                         "--psam-image PSAM.card (or --psam-reader NAME for one behind pcscd)")
    root = _purse_root(args)
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    with contextlib.ExitStack() as stack:
        buyer_conn = stack.enter_context(cards.connection(AID.PURSE, args.reader, args.image))
        purse = PurseSession(buyer_conn)
        amount = parse_amount(args.amount, purse.info().currency)
        try:
            psam_conn = stack.enter_context(cards.connection(AID.PSAM, args.psam_reader, args.psam_image,
                                                             exclude=(buyer_conn.reader,)))
        except hw_errors.ReaderError as e:
            if args.psam_image is not None or args.psam_reader is not None:
                raise
            raise CommandFailed(f"no PSAM to pay: none was named and the readers hold none ({e}); pass --psam-image "
                                "PSAM.card, or --psam-reader NAME") from None
        psam = PsamSession(psam_conn)
        purse.select()
        result = card_purse.purchase(purse, psam, amount, root)
        balance = purse.info()
    p = result.proof
    emit(args, {"paid": format_amount(p.amount, p.currency), "psam": p.psam_id.hex().upper(),
                "debit_counter": p.debit_counter, "batch": result.batch_number, "batch_index": result.batch_index,
                "balance": format_amount(balance.balance, balance.currency)},
         f"paid {format_amount(p.amount, p.currency)} to PSAM {p.psam_id.hex().upper()} (debit #{p.debit_counter}, "
         f"batch {result.batch_number} entry {result.batch_index}); balance "
         f"{format_amount(balance.balance, balance.currency)}")
    return 0


def log_rows(purse: PurseSession) -> list[dict[str, Any]]:
    currency = purse.info().currency
    return [{"kind": e.kind, "counter": e.counter, "amount": format_amount(e.amount, currency),
             "balance_after": format_amount(e.balance_after, currency)} for e in purse.log()]


def cmd_card_log(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    from semper.hardware.purse import PurseSession
    with cards.connection(AID.PURSE, args.reader, args.image, read_only=True) as conn:
        image_notes(conn)
        rows = log_rows(PurseSession(conn))

    def text() -> str:
        if not rows:
            return "the card's log is empty"
        return "\n".join(f"{r['kind']:5} #{r['counter']:<5} {r['amount']:>12}  balance after {r['balance_after']}"
                         for r in rows)
    emit(args, rows, text)
    return 0


def _puk_error(e: hw_errors.CardError) -> hw_errors.CardError:
    """The card answers a wrong PUK in UNBLOCK with the same status words as a wrong PIN: say PUK."""
    if isinstance(e, hw_errors.WrongPinError):
        if e.tries_left == 0:
            return hw_errors.CardError("wrong PUK: the PUK is now blocked, so the PIN can no longer be unblocked; "
                                       "the card must be replaced", e.sw)
        left = "" if e.tries_left is None else f": {e.tries_left} {'try' if e.tries_left == 1 else 'tries'} left"
        return hw_errors.CardError(f"wrong PUK{left}; the PIN stays blocked", e.sw)
    if isinstance(e, hw_errors.PinBlockedError):
        return hw_errors.CardError("the PUK is blocked, so the PIN can no longer be unblocked; the card must be "
                                   "replaced", e.sw)
    return e


def cmd_card_pin(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    if args.action == "change":
        old = read_card_pin("current PIN", args.pin_stdin)
        new = read_card_pin("new PIN", args.pin_stdin, confirm=not args.pin_stdin)
    else:
        puk = read_card_pin("PUK", args.pin_stdin, "PUK")
        new = read_card_pin("new PIN", args.pin_stdin, confirm=not args.pin_stdin)
    with cards.purse(args.reader, args.image) as purse:
        if args.action == "change":
            purse.change_pin(old, new)
            done = "PIN changed"
        else:
            if purse.info().puk_tries == 0:
                raise _puk_error(hw_errors.PinBlockedError(0, "PUK"))
            try:
                purse.unblock_pin(puk, new)
            except (hw_errors.WrongPinError, hw_errors.PinBlockedError) as e:
                raise _puk_error(e) from None
            done = "PIN unblocked and set"
    emit(args, {"done": done}, done)
    return 0


def cmd_card_batch(args: argparse.Namespace) -> int:
    from semper.hardware import cards
    with cards.psam(args.psam_reader, args.psam_image) as psam:
        header, _signed = psam.close_batch()
    emit(args, {"batch": header.batch_number, "count": header.count,
                "total": format_amount(header.total, header.currency)},
         f"batch {header.batch_number} closed: {header.count} debits, {format_amount(header.total, header.currency)}"
         " (a shop clears its batches with 'semper shop clear')")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("readers", help="list PC/SC readers and the card in each")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="print insertion/removal events for a while")
    json_arg(p)
    p.set_defaults(fn=cmd_readers)

    card = groups["card"]
    p = card.add_parser("new", help="personalise a new card image (keys made on the card)")
    p.add_argument("-i", "--image", type=card_image, required=True)
    p.add_argument("--psam", action="store_true", help="make a seller's PSAM instead of a buyer card")
    p.add_argument("--psam-id", type=hex_id(16), help="PSAM id, 16 hex digits (default: random)")
    p.add_argument("--issuer-cert", type=existing_file, metavar="BANK_PEM",
                   help="the bank whose load commands the purse accepts: its issuer certificate (bank.pem from "
                        "'semper bank init'). Without it the card is of the test scheme: it loads from the scheme's "
                        "local test issuer key (semper card load without --bank)")
    p.add_argument("--pin", help=f"refused unless {ARGV_PIN_ENV}=1 (argv is visible in the process list); use "
                                 "--pin-stdin")
    p.add_argument("--puk", help=f"refused unless {ARGV_PIN_ENV}=1; use --pin-stdin")
    p.add_argument("--pin-stdin", action="store_true", help="read PIN and PUK from standard input, one line each")
    p.add_argument("--card-number", type=hex_id(16), help="16 hex digits (default: random)")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--max-balance", default="200.00", help="in the card's currency (default 200.00)")
    p.add_argument("--no-sync", action="store_true", help="no fsync per commit (faster, not power-safe)")
    scheme_args(p)
    json_arg(p)
    p.set_defaults(fn=cmd_card_new)

    p = card.add_parser("serve", help="put card images into pcscd's virtual readers (vpcd)")
    p.add_argument("-i", "--image", type=card_image, required=True, help="buyer card, reader 'Virtual PCD 00 00'")
    p.add_argument("--psam-image", type=card_image, help="PSAM, reader 'Virtual PCD 00 01'")
    p.add_argument("-H", "--host", default="127.0.0.1")
    p.add_argument("-p", "--port", type=port, default=35963, help="vpcd's port for the first reader (default 35963, "
                                                                  "as in /etc/reader.conf.d/vpcd)")
    p.add_argument("--no-sync", action="store_true")
    p.set_defaults(fn=cmd_card_serve)

    p = card.add_parser("info", help="show a card: purse and PIV slots (or the PSAM with --psam)")
    card_args(p)
    p.add_argument("--psam", action="store_true")
    json_arg(p)
    p.set_defaults(fn=cmd_card_info)

    p = card.add_parser("cert", help="export a certificate from the card (purse, PSAM or a PIV slot)")
    p.add_argument("slot", choices=["purse", "psam", "9a", "9c", "9d", "9e"], type=str.lower,
                   help="purse: the purse's (semper bank link-card); psam: the PSAM's (link-psam); 9c: the signature "
                        "key's (semper bank open-account --owner-cert)")
    card_args(p, psam=True)
    p.add_argument("-o", "--out", type=new_file, help="write it to this file (default: standard output)")
    p.add_argument("--der", action="store_true", help="DER instead of PEM")
    json_arg(p)
    p.set_defaults(fn=cmd_card_cert)

    p = card.add_parser("load", help="load the purse from your bank account (--bank or prefs servers.bank), or in a "
                                     "test scheme from its local issuer (needs the PIN)")
    p.add_argument("amount", type=amount, help="in the card's currency, e.g. 50.00")
    card_args(p)
    p.add_argument("--pin-stdin", action="store_true", help="read the card PIN from standard input")
    bank_args(p)
    p.add_argument("--test-issuer", action="store_true",
                   help="load from the purse scheme's local test issuer key (a test scheme; the default when no bank "
                        "is named)")
    scheme_args(p)
    json_arg(p)
    p.set_defaults(fn=cmd_card_load)

    p = card.add_parser("pay", help="pay from the purse through a PSAM (a test of the cards; a purchase goes "
                                    "through 'semper buy')")
    p.add_argument("amount", type=amount, help="in the card's currency, e.g. 12.50")
    card_args(p, psam=True)
    p.add_argument("--purse-root", type=existing_file,
                   help="the purse scheme root (PEM) the PSAM's side checks the card against (default: prefs "
                        "trust.purse_root, else $SEMPER_HOME/scheme/root-cert.pem)")
    json_arg(p)
    p.set_defaults(fn=cmd_card_pay)

    p = card.add_parser("log", help="the purse's on-card transaction log (semper deals links it to your deals)")
    card_args(p)
    json_arg(p)
    p.set_defaults(fn=cmd_card_log)

    p = card.add_parser("pin", help="change or unblock the card PIN")
    p.add_argument("action", choices=["change", "unblock"])
    card_args(p)
    p.add_argument("--pin-stdin", action="store_true", help="read PIN/PUK lines from standard input")
    json_arg(p)
    p.set_defaults(fn=cmd_card_pin)

    p = card.add_parser("close-batch", help="close the PSAM's batch (a shop clears with 'semper shop clear')")
    p.add_argument("--psam-reader")
    p.add_argument("--psam-image", type=card_image)
    json_arg(p)
    p.set_defaults(fn=cmd_card_batch)


__all__ = ["check_pin_format", "log_rows"]
