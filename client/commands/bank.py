"""``semper bank ...`` (the operator's side), ``semper serve bank`` and ``semper bench clearing``.

The bank's keys live in its token; every command that signs or opens payment instructions asks
for the token PIN (``--pin-stdin`` / ``--pin-file`` for scripts). Bookkeeping that needs no key
(balances, shadow balances) opens only the database.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..support.money import format_amount, parse_amount, parse_currency
from . import UsageError, open_scheme, print_json, read_secret, scheme_args
from .storage_args import add_db_arg


def location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank-dir", type=Path, help="the bank's folder (default: $SEMPER_HOME/bank)")
    add_db_arg(p, "the bank folder")


def pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-stdin", action="store_true", help="read the bank token's PIN from standard input")
    p.add_argument("--pin-file", type=Path, help="read the bank token's PIN from this file (for services)")


def _pin(args: argparse.Namespace) -> bytes:
    if args.pin_file:
        try:
            return args.pin_file.read_text().strip().encode()
        except OSError as e:
            raise UsageError(f"cannot read {args.pin_file}: {e.strerror}") from None
    return read_secret("bank token PIN", args.pin_stdin)


def tls_args(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--tls-cert", type=Path, help="TLS chain from 'semper ca tls-cert' (cert.pem: server certificate, "
                                                 f"then the CA root clients pin); {when}")
    p.add_argument("--tls-key", type=Path, help="its private key (key.pem)")


def _tls(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The CA-issued (chain, key) pair, or None: both are given or neither."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return (args.tls_cert, args.tls_key) if args.tls_cert is not None else None


def _home(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..servers.bank_home import BankHome
    return BankHome.default(args.bank_dir, args.db)


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return _home(args).open(_pin(args))


def cmd_init(args: argparse.Namespace) -> int:
    h = _home(args)
    tls = _tls(args)
    pin = _pin(args)
    scheme = open_scheme(args, args.scheme_dir)
    currencies = tuple(parse_currency(c) for c in (args.currency or ["EUR"]))
    denoms = tuple(int(d) for d in args.denominations.split(",")) if args.denominations else None
    kw = {"denominations": denoms} if denoms else {}
    conf = args.softhsm_conf or (h.folder / "softhsm" / "softhsm2.conf")
    with scheme:
        bank_id = h.init(scheme, pin, token_label=args.token, softhsm_conf=Path(conf),
                         create_token=args.softhsm_conf is None, currencies=currencies, tls=tls, **kw)
    origin = "the CA root of --tls-cert" if tls else "the bank's own TLS root"
    print(f"bank {bank_id} initialised in {h.folder}; clients pin {h.tls_root} ({origin}); "
          f"issuer certificate {h.cert_file}")
    return 0


def _cert(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    data = path.read_bytes()
    try:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER) if b"-----BEGIN" in data else data
    except ValueError:
        raise UsageError(f"{path} is not an X.509 certificate (PEM or DER)") from None


def cmd_open_account(args: argparse.Namespace) -> int:
    bank = _open(args)
    account = bank.open_account(args.name, parse_currency(args.currency), _cert(args.owner_cert))
    print(account)
    return 0


def cmd_cash(args: argparse.Namespace) -> int:
    bank = _open(args)
    currency = bank.currency(args.account)
    amount = parse_amount(args.amount, currency)
    (bank.cash_in if args.bank_command == "cash-in" else bank.cash_out)(args.account, amount)
    print(f"{args.account}: {format_amount(bank.balance(args.account), currency)}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    bank = _open(args)
    fn = bank.link_card if args.bank_command == "link-card" else bank.link_psam
    print(fn(_cert(args.certificate), args.account))
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    bank = _open(args)
    if args.card:
        print_json({"card": args.card.upper(), "shadow_balance": bank.shadow(args.card)})
    else:
        print_json({"account": args.account, "balance": bank.balance(args.account)})
    return 0


def cmd_serve_bank(args: argparse.Namespace) -> int:
    from ..servers.bank_home import install_tls_identity
    from ..servers.bank_http import build_app
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    h = _home(args)
    tls = _tls(args)
    bank = h.open(_pin(args))
    if tls is not None:                     # a renewed CA-issued certificate: kept in the bank folder
        install_tls_identity(h.tls_dir, *tls)
    runner = ServiceRunner(build_app(bank), args.host, args.port,
                           server_context(h.tls_dir / "cert.pem", h.tls_dir / "key.pem"))
    return run_until_signalled(runner, f"semper bank {bank.bank_id}")


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    bank = sub.add_parser("bank", help="the bank operator: keys, accounts, cash, cards and PSAMs")
    bsub = bank.add_subparsers(dest="bank_command", required=True)
    p = bsub.add_parser("init", help="make the bank's keys on its token and its folder")
    location_args(p)
    pin_args(p)
    p.add_argument("--scheme-dir", type=Path, help="the purse scheme's folder (root that certifies the issuer; "
                                                   "default $SEMPER_HOME/scheme)")
    scheme_args(p)
    p.add_argument("--token", default="semper-bank", help="token label (default semper-bank)")
    p.add_argument("--softhsm-conf", type=Path, help="use this SoftHSM2 configuration and an existing token")
    p.add_argument("--currency", action="append", help="currency the bank keeps (repeat; default EUR)")
    p.add_argument("--denominations", help="coin values in minor units, comma-separated")
    tls_args(p, "without it the bank makes a TLS root of its own")
    p.set_defaults(fn=cmd_init)
    p = bsub.add_parser("open-account", help="open an account for the holder of a certificate")
    location_args(p)
    pin_args(p)
    p.add_argument("name")
    p.add_argument("--owner-cert", type=Path, required=True, help="the holder's card or token certificate")
    p.add_argument("--currency", default="EUR")
    p.set_defaults(fn=cmd_open_account)
    for name, text in (("cash-in", "money enters an account from outside"), ("cash-out", "money leaves the bank")):
        p = bsub.add_parser(name, help=text)
        location_args(p)
        pin_args(p)
        p.add_argument("account")
        p.add_argument("amount")
        p.set_defaults(fn=cmd_cash)
    for name, text in (("link-card", "record a purse card and the account its loads come from"),
                       ("link-psam", "record a seller's PSAM and the account its batches are paid to")):
        p = bsub.add_parser(name, help=text)
        location_args(p)
        pin_args(p)
        p.add_argument("certificate", type=Path, help="the card's or PSAM's certificate (PEM or DER)")
        p.add_argument("account")
        p.set_defaults(fn=cmd_link)
    p = bsub.add_parser("balance", help="an account's balance or a card's shadow balance")
    location_args(p)
    pin_args(p)
    p.add_argument("account", nargs="?")
    p.add_argument("--card", help="a purse card number (shadow balance at the issuer)")
    p.set_defaults(fn=cmd_balance)

    p = groups["serve"].add_parser("bank", help="the bank (issuer, acquirer, accounts, mint) over HTTPS")
    location_args(p)
    pin_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8444, help="port (default 8444; 0 = any free port)")
    tls_args(p, "replaces the bank folder's TLS certificate (e.g. a renewed one) before serving")
    p.set_defaults(fn=cmd_serve_bank)
