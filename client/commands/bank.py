"""``semper bank ...`` (the operator's side) and ``semper serve bank``.

The bank's keys live in its token; the commands that change the books (open an account, cash in
or out, link a card or PSAM) open it with the token PIN (``--pin-stdin`` / ``--pin-file`` for
scripts), as does the service. Looking (``balance``, ``accounts``) and trusting a CA root
(``trust-root``) need only the bank's folder and database: no PIN is asked for.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..support.money import format_amount, parse_amount, parse_currency
from . import (
    UsageError,
    amount,
    emit,
    existing_file,
    json_arg,
    note,
    open_scheme,
    read_pin_file,
    read_secret,
    scheme_args,
)
from .serve import listen_args, worker_args
from .storage_args import add_db_arg

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from ..servers.bank import Bank
    from ..servers.bank_home import BankHome


def location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank-dir", type=Path, help="the bank's folder (default: $SEMPER_HOME/bank)")
    add_db_arg(p, "the bank folder")


def pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-stdin", action="store_true", help="read the bank token's PIN from standard input")
    p.add_argument("--pin-file", type=existing_file, help="read the bank token's PIN from this file (for services)")


def _pin(args: argparse.Namespace) -> bytes:
    if args.pin_file:
        return read_pin_file(args.pin_file, "bank token PIN")
    return read_secret("bank token PIN", args.pin_stdin)


def tls_args(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--tls-cert", type=existing_file, help="TLS chain from 'semper ca tls-cert' (cert.pem: server "
                   f"certificate, then the CA root clients pin); {when}")
    p.add_argument("--tls-key", type=existing_file, help="its private key (key.pem)")


def _tls(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The CA-issued (chain, key) pair, or None: both are given or neither."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return (args.tls_cert, args.tls_key) if args.tls_cert is not None else None


def _home(args: argparse.Namespace) -> BankHome:
    from ..servers.bank_home import BankHome
    return BankHome.default(args.bank_dir, args.db)


def _open(args: argparse.Namespace) -> Bank:
    h = _home(args)
    h.config()                                   # no bank there: say so before asking for a PIN
    return h.open(_pin(args))


def _denominations(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        values = tuple(int(d, 10) for d in text.split(","))
    except ValueError:
        raise UsageError(f"--denominations {text!r}: write coin values in minor units, comma-separated, "
                         "e.g. 1,2,5,10,20,50,100") from None
    if any(v < 1 for v in values) or len(set(values)) != len(values):
        raise UsageError(f"--denominations {text!r}: each coin value must be 1 or more, and given once")
    return tuple(sorted(values))


def _cert(path: Path, what: str = "certificate") -> Certificate:
    from cryptography import x509
    data = path.read_bytes()
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError(f"{path} is not an X.509 {what} (PEM or DER)") from None


def cmd_init(args: argparse.Namespace) -> int:
    h = _home(args)
    if h.config_file.exists():
        raise UsageError(f"{h.folder} already holds a bank; choose another --bank-dir")
    tls = _tls(args)
    currencies = tuple(parse_currency(c) for c in (args.currency or ["EUR"]))
    denoms = _denominations(args.denominations)
    roots = tuple(_cert(p, "CA root") for p in args.trust_root or [])
    pin = _pin(args)
    scheme = open_scheme(args, args.scheme_dir)
    kw: dict[str, Any] = {"denominations": denoms} if denoms else {}
    conf = args.softhsm_conf or (h.folder / "softhsm" / "softhsm2.conf")
    with scheme:
        bank_id = h.init(scheme, pin, token_label=args.token, softhsm_conf=Path(conf),
                         create_token=args.softhsm_conf is None, currencies=currencies, tls=tls, extra_roots=roots,
                         **kw)
    origin = "the CA root of --tls-cert" if tls else "the bank's own TLS root"
    emit(args, {"bank": bank_id, "folder": str(h.folder), "tls_root": str(h.tls_root),
                "issuer_certificate": str(h.cert_file), "trusted_roots": [str(p) for p in args.trust_root or []]},
         f"bank {bank_id} initialised in {h.folder}\n"
         f"clients pin {h.tls_root} ({origin})\n"
         f"issuer certificate (cards that load from this bank: semper card new --issuer-cert): {h.cert_file}")
    return 0


def cmd_trust_root(args: argparse.Namespace) -> int:
    saved = _home(args).trust_root(_cert(args.root, "CA root"))
    emit(args, {"root": str(saved)}, f"the bank now accepts certificates under {args.root} (kept as {saved}); "
                                     "a running 'semper serve bank' takes it on its next start")
    return 0


def cmd_open_account(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding
    currency = parse_currency(args.currency)
    owner = _cert(args.owner_cert, "owner certificate").public_bytes(Encoding.DER)
    bank = _open(args)
    account = bank.open_account(args.name, currency, owner)
    note(f"opened account {account} for {args.name!r} ({format_amount(0, currency)})")
    emit(args, {"account": account, "name": args.name, "currency": currency}, account)
    return 0


def cmd_cash(args: argparse.Namespace) -> int:
    h = _home(args)
    currency = h.account(args.account).currency      # an unknown account is said before the PIN is asked
    amount = parse_amount(args.amount, currency)
    bank = h.open(_pin(args))
    (bank.cash_in if args.bank_command == "cash-in" else bank.cash_out)(args.account, amount)
    balance = bank.balance(args.account)
    emit(args, {"account": args.account, "balance": format_amount(balance, currency), "balance_minor": balance,
                "currency": currency}, f"{args.account}: {format_amount(balance, currency)}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding
    what = "card" if args.bank_command == "link-card" else "PSAM"
    der = _cert(args.certificate, f"{what} certificate").public_bytes(Encoding.DER)
    h = _home(args)
    h.account(args.account)
    bank = h.open(_pin(args))
    fn = bank.link_card if what == "card" else bank.link_psam
    linked = fn(der, args.account)
    emit(args, {what.lower(): linked, "account": args.account}, f"{what} {linked} linked to account {args.account}")
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    h = _home(args)
    if args.card:
        shadow, currency = h.shadow(args.card)
        emit(args, {"card": args.card.upper(), "shadow_balance": format_amount(shadow, currency),
                    "shadow_balance_minor": shadow, "currency": currency},
             f"card {args.card.upper()}: {format_amount(shadow, currency)} loaded and not yet spent (shadow balance)")
        return 0
    if not args.account:
        raise UsageError("which account? name it (semper bank balance ACCOUNT; 'semper bank accounts' lists them), or "
                         "pass --card NUMBER for a purse card's shadow balance")
    acc = h.account(args.account)
    emit(args, {"account": acc.id, "name": acc.name, "balance": format_amount(acc.balance, acc.currency),
                "balance_minor": acc.balance, "currency": acc.currency},
         f"{acc.id} ({acc.name}): {format_amount(acc.balance, acc.currency)}")
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    h = _home(args)
    accounts = h.accounts()
    linked = h.linked()
    rows: list[dict[str, Any]] = [{"account": a.id, "name": a.name, "balance": format_amount(a.balance, a.currency),
             "balance_minor": a.balance, "currency": a.currency,
             "cards": [i for k, i, acc, _ in linked if k == "card" and acc == a.id],
             "psams": [i for k, i, acc, _ in linked if k == "psam" and acc == a.id]} for a in accounts]

    def text() -> str:
        if not rows:
            return f"no accounts yet at the bank in {h.folder} (semper bank open-account NAME --owner-cert FILE)"
        lines = []
        for r in rows:
            extra = [f"card {c}" for c in r["cards"]] + [f"PSAM {p}" for p in r["psams"]]
            lines.append(f"{r['account']}  {r['balance']:>14}  {r['name']}" + (f"  ({', '.join(extra)})" if extra
                                                                                 else ""))
        return "\n".join(lines)
    emit(args, rows, text)
    return 0


def cmd_serve_bank(args: argparse.Namespace) -> int:
    from ..servers.bank_home import install_tls_identity
    from ..servers.bank_http import build_app
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import check_bindable, check_workers, run_until_signalled, serve_as_worker, serve_workers
    check_workers(args)
    h = _home(args)
    if args.listen_fd is not None:               # one worker of --workers N (its parent checked the rest)
        from ..support.prefork import die_with_parent
        die_with_parent(args.parent_pid)
        bank = _open(args)
        return serve_as_worker(args, build_app(bank), (h.tls_dir / "cert.pem", h.tls_dir / "key.pem"),
                               f"semper bank {bank.bank_id}")
    tls = _tls(args)
    check_bindable(args.host, args.port)
    if args.workers > 1:
        bank_id = str(h.config()["bank_id"])     # no bank there: say so before asking for the PIN
        pin = _pin(args)
        if tls is not None:
            install_tls_identity(h.tls_dir, *tls)
        argv = [sys.executable, "-m", "semper.client.cli", "serve", "bank", "--bank-dir", str(h.folder)]
        if args.db:
            argv += ["--db", args.db]
        return serve_workers(args, f"semper bank {bank_id}", argv, pin)
    bank = _open(args)
    if tls is not None:                     # a renewed CA-issued certificate: kept in the bank folder
        install_tls_identity(h.tls_dir, *tls)
    runner = ServiceRunner(build_app(bank), args.host, args.port,
                           server_context(h.tls_dir / "cert.pem", h.tls_dir / "key.pem"))
    return run_until_signalled(runner, f"semper bank {bank.bank_id}")


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    bank = sub.add_parser("bank", help="the bank operator: keys, accounts, cash, cards and PSAMs")
    bsub = bank.add_subparsers(dest="bank_command", required=True)
    p = bsub.add_parser("init", help="make the bank's keys on its token and its folder")
    location_args(p)
    pin_args(p)
    p.add_argument("--scheme-dir", type=Path, help="the purse scheme's folder (root that certifies the issuer; "
                                                   "default $SEMPER_HOME/scheme)")
    scheme_args(p)
    p.add_argument("--token", default="semper-bank", help="token label (default semper-bank)")
    p.add_argument("--softhsm-conf", type=existing_file, help="use this SoftHSM2 configuration and an existing token")
    p.add_argument("--currency", action="append", help="currency the bank keeps (repeat; default EUR)")
    p.add_argument("--denominations", help="coin values in minor units, comma-separated")
    p.add_argument("--trust-root", type=existing_file, action="append", metavar="CA_ROOT",
                   help="a CA root whose certificates the bank accepts (account owners, signed requests; repeat)")
    tls_args(p, "without it the bank makes a TLS root of its own")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = bsub.add_parser("trust-root", help="accept certificates under a CA root (e.g. the semper CA's ca.pem)")
    location_args(p)
    p.add_argument("root", type=existing_file, help="the CA's self-signed root certificate (PEM or DER)")
    json_arg(p)
    p.set_defaults(fn=cmd_trust_root)

    p = bsub.add_parser("open-account", help="open an account for the holder of a certificate; prints its id")
    location_args(p)
    pin_args(p)
    p.add_argument("name")
    p.add_argument("--owner-cert", type=existing_file, required=True,
                   help="the holder's card or token certificate (semper card cert 9c, or the copy 'semper register' "
                        "keeps); its root must be one the bank trusts (semper bank trust-root)")
    p.add_argument("--currency", default="EUR")
    json_arg(p)
    p.set_defaults(fn=cmd_open_account)
    for name, text in (("cash-in", "money enters an account from outside"), ("cash-out", "money leaves the bank")):
        p = bsub.add_parser(name, help=text)
        location_args(p)
        pin_args(p)
        p.add_argument("account")
        p.add_argument("amount", type=amount, help="in the account's currency, e.g. 100.00")
        json_arg(p)
        p.set_defaults(fn=cmd_cash)
    for name, text in (("link-card", "record a purse card and the account its loads come from"),
                       ("link-psam", "record a seller's PSAM and the account its batches are paid to")):
        p = bsub.add_parser(name, help=text)
        location_args(p)
        pin_args(p)
        p.add_argument("certificate", type=existing_file,
                       help="the card's purse or the PSAM's certificate, PEM or DER (semper card cert purse|psam)")
        p.add_argument("account")
        json_arg(p)
        p.set_defaults(fn=cmd_link)
    p = bsub.add_parser("balance", help="an account's balance or a card's shadow balance (no PIN needed)")
    location_args(p)
    p.add_argument("account", nargs="?")
    p.add_argument("--card", help="a purse card number (shadow balance at the issuer)")
    json_arg(p)
    p.set_defaults(fn=cmd_balance)
    p = bsub.add_parser("accounts", help="every customer account, its balance, cards and PSAMs (no PIN needed)")
    location_args(p)
    json_arg(p)
    p.set_defaults(fn=cmd_accounts)

    p = groups["serve"].add_parser("bank", help="the bank (issuer, acquirer, accounts, mint) over HTTPS")
    location_args(p)
    pin_args(p)
    listen_args(p, "bank")
    worker_args(p, "bank")
    tls_args(p, "replaces the bank folder's TLS certificate (e.g. a renewed one) before serving")
    p.set_defaults(fn=cmd_serve_bank)
