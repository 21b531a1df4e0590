"""``semper ttp init`` and ``semper serve ttp``: the third party of fair exchange.

``init`` makes the third party's keys on its token (creating a SoftHSM2 token if asked), has the
local semper CA certify them (the operator opens the CA with its own PIN, as for ``semper ca
tls-cert``), and writes the third party's folder (``client/servers/ttp_home.py``).
``serve ttp`` runs it over HTTPS until SIGINT/SIGTERM and prints one line with its URL when it
listens. Its decisions live in its database, so a restart loses nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import UsageError, emit, existing_file, json_arg
from .ca_token import add_ca_token_args, ca_certified_token, read_pin
from .serve import check_bindable, listen_args
from .storage_args import add_db_arg

if TYPE_CHECKING:
    from ..servers.ttp_home import TtpHome


def _home(args: argparse.Namespace) -> TtpHome:
    from ..servers.ttp_home import TtpHome
    return TtpHome.default(args.dir, getattr(args, "db", None))


def cmd_init(args: argparse.Namespace) -> int:
    """Why this order: one process can use one SoftHSM2 token folder at a time (switching re-initialises
    the module and ends every login), so the third party's token lives in the CA's token folder (or
    the one given), is created first, and only then are the CA's and the third party's keys opened."""
    from cryptography import x509

    from ..servers.ttp_home import TtpHome
    home = _home(args)
    if home.config_file.exists():
        raise UsageError(f"{home.folder} already holds a third party")
    t = ca_certified_token(args, "the third party")
    ca_home, ca, module, store, ca_pin, pin = t.ca_home, t.ca, t.module, t.store, t.ca_pin, t.pin
    purse_root = None
    if args.purse_root:
        try:
            purse_root = x509.load_pem_x509_certificate(args.purse_root.read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(f"--purse-root {args.purse_root}: not a readable PEM certificate ({e})") from None
    ca.signer = ca_home.open_signer(ca, ca_pin)
    hosts = tuple(dict.fromkeys([args.host, "127.0.0.1", "localhost", *(args.tls_host or [])]))
    TtpHome.create(home.folder, ca=ca, token_label=args.token, pin=pin, softhsm_conf=str(store.conf), module=module,
                   name=args.name, email=args.email, hosts=hosts, purse_root=purse_root, dsn=args.db)
    emit(args, {"folder": str(home.folder), "certificate": str(home.cert_pem), "escrow": str(home.escrow_file),
                "token": args.token},
         f"third party {args.name!r} set up in {home.folder}; its keys stay in token {args.token!r}\n"
         f"give parties {home.cert_pem} and {home.escrow_file} (its escrow-key statement)")
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    home = _home(args)
    home.config()
    if not args.bank.startswith("https://"):
        raise UsageError("--bank must be the bank's https:// URL")
    if not args.bank_tls_root.is_file():
        raise UsageError(f"--bank-tls-root {args.bank_tls_root}: no such file")
    home.connect_bank(args.bank, args.bank_tls_root)
    emit(args, {"folder": str(home.folder), "bank": args.bank},
         f"the third party in {home.folder} asks the bank at {args.bank} about payments in fair exchanges")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    home = _home(args)
    check_bindable(args.host, args.port)
    opened = home.open(read_pin(args.pin_file, args.pin_stdin, "third party token PIN"))
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, "semper third party")
    finally:
        opened.close()


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    ttp = sub.add_parser("ttp", help="the third party of fair exchange: set-up").add_subparsers(
        dest="ttp_command", required=True)
    p = ttp.add_parser("init", help="make the third party's keys on its token and have the CA certify them")
    p.add_argument("--dir", type=Path, help="the third party's folder (default: $SEMPER_HOME/ttp)")
    add_db_arg(p, "the third party's folder")
    add_ca_token_args(p, "the third party", "semper-ttp")
    p.add_argument("--name", default="semper third party", help="the name in its certificates")
    p.add_argument("--email", default="ttp@semper.example", help="its e-mail address (certificate)")
    p.add_argument("--purse-root", type=existing_file, help="the card purse scheme root (PEM), to verify debit proofs")
    p.add_argument("--host", default="127.0.0.1", help="its service's address (TLS certificate)")
    p.add_argument("--tls-host", action="append", help="another name for the TLS certificate (repeat)")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = ttp.add_parser("bank", help="let the third party reach the bank (e-cash and cheques in fair exchanges)")
    p.add_argument("--dir", type=Path, help="the third party's folder (default: $SEMPER_HOME/ttp)")
    p.add_argument("--bank", required=True, help="the bank's URL")
    p.add_argument("--bank-tls-root", type=Path, required=True, help="the bank's TLS root (PEM)")
    json_arg(p)
    p.set_defaults(fn=cmd_bank)

    p = groups["serve"].add_parser("ttp", help="the third party (resolve, abort, complaint, status, time-stamps)")
    p.add_argument("--dir", type=Path, help="the third party's folder (default: $SEMPER_HOME/ttp)")
    add_db_arg(p, "the third party's folder")
    p.add_argument("--pin-file", type=existing_file, help="read the token PIN from this file (for services)")
    p.add_argument("--pin-stdin", action="store_true", help="read the token PIN from standard input")
    listen_args(p, "ttp")
    p.set_defaults(fn=cmd_serve)
