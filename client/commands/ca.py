"""``semper ca ...``: the CA operator's commands (init, add-person, revoke, crl, tls-cert, list).

All of them work on the CA folder (``--ca-dir``, default ``$SEMPER_HOME/ca``) and its database
(``--db DSN``). Commands that sign (init, crl, tls-cert) need the CA token's PIN; the bookkeeping
ones (add-person, revoke, list) do not, and a running ``semper serve ca`` sees their changes.
"""
from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from . import UsageError, emit, existing_file, json_arg, new_file, note, read_pin_file, read_secret
from .storage_args import add_db_arg

if TYPE_CHECKING:
    from semper.hsm import softhsm

    from ..servers.ca import CertificationAuthority
    from ..servers.ca_home import CaHome


def ca_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-dir", type=Path, help="the CA's folder (default: $SEMPER_HOME/ca)")
    add_db_arg(p, "the CA folder")


def pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-stdin", action="store_true", help="read the CA token's PIN from standard input")
    p.add_argument("--pin-file", type=existing_file, help="read the CA token's PIN from this file (for services)")


def read_ca_pin(args: argparse.Namespace) -> bytes:
    if getattr(args, "pin_file", None):
        return read_pin_file(args.pin_file, "CA token PIN")
    return read_secret("CA token PIN", args.pin_stdin)


def home(args: argparse.Namespace) -> CaHome:
    from ..servers.ca_home import CaHome
    return CaHome.default(args.ca_dir, args.db)


def open_ca(args: argparse.Namespace, *, signing: bool) -> tuple[CaHome, CertificationAuthority]:
    """The CA of the arguments; with ``signing``, its token opened and logged in."""
    h = home(args)
    ca = h.open()
    if not ca.initialised:
        raise UsageError(f"no CA in {h.folder} (database {h.db.dsn.display}); run 'semper ca init' first")
    if signing:
        ca.signer = h.open_signer(ca, read_ca_pin(args))
    return h, ca


def _softhsm_store(args: argparse.Namespace, h: CaHome) -> softhsm.SoftHsmStore:
    from semper.hsm.softhsm import SoftHsmStore
    if args.create_token:
        return SoftHsmStore.in_folder(h.softhsm_dir)
    if args.token_dir:
        return SoftHsmStore.in_folder(args.token_dir)
    if os.environ.get("SOFTHSM2_CONF"):
        return SoftHsmStore.from_conf(Path(os.environ["SOFTHSM2_CONF"]))
    from ..support.paths import semper_home
    return SoftHsmStore.in_folder(semper_home() / "tokens")


def cmd_init(args: argparse.Namespace) -> int:
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import provision
    h = home(args)
    ca = h.open()
    if ca.initialised:
        raise UsageError(f"the CA in {h.folder} is already initialised; its root is {h.root_pem}")
    store = _softhsm_store(args, h) if args.module is None or "softhsm" in args.module else None
    pin = read_ca_pin(args)
    if args.create_token:
        if store is None:
            raise UsageError(f"--create-token makes a SoftHSM2 token; {args.module} is another PKCS#11 module: create "
                             "the token with its own tools, then run 'semper ca init' without --create-token")
        so_pin = secrets.token_hex(16).encode()
        provision(store, args.token, pin, so_pin, module=args.module)
        note(f"created SoftHSM2 token {args.token!r} in {store.token_dir}")
        note(f"its SO PIN (shown once, keep it offline): {so_pin.decode()}")
    conf = str(store.conf) if store is not None else None
    signer = Pkcs11Signer.open(args.token, args.module, softhsm_conf=conf)
    signer.verify_pin(pin)
    ca.signer = signer
    admin = ca.initialise(args.name, token_label=args.token, module=args.module, softhsm_conf=conf,
                          days=args.days, cert_days=args.cert_days, crl_url=args.crl_url)
    from ..servers.ca_home import write_private
    write_private(h.admin_secret_file, (admin + "\n").encode())
    root = h.publish_root(ca)
    emit(args, {"name": args.name, "folder": str(h.folder), "root": str(root), "token": args.token,
                "admin_secret": str(h.admin_secret_file)},
         f"CA {args.name!r} initialised in {h.folder}; its key stays in token {args.token!r}\n"
         f"root certificate (give it to every client to pin): {root}\n"
         f"admin secret for the operator endpoints: {h.admin_secret_file}")
    return 0


def cmd_add_person(args: argparse.Namespace) -> int:
    _h, ca = open_ca(args, signing=False)
    if args.out is not None and args.out.exists():
        raise UsageError(f"{args.out} exists already; a registration key is written to a new file only")
    reg_id, key = ca.add_person(args.name, email=args.email, role=args.role, hosts=tuple(args.host or ()))
    if args.out is not None:
        from ..support.secret_files import write_secret
        write_secret(args.out, key + "\n")
        emit(args, {"registration_id": reg_id, "registration_key_file": str(args.out)},
             f"registered {args.name!r} as {args.role}; the one-time registration key is in {args.out} (0600): hand "
             f"it over, then delete it (semper register --registration-key-file)")
        return 0
    emit(args, {"registration_id": reg_id, "registration_key": key},
         f"registered {args.name!r} as {args.role}; one-time registration key (shown only now):\n{key}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _h, ca = open_ca(args, signing=False)
    cert = ca.revoke(args.serial, args.reason)
    emit(args, {"serial": cert.serial, "name": cert.common_name, "reason": cert.revocation_reason},
         f"certificate {cert.serial} ({cert.common_name}) revoked: {cert.revocation_reason}; the next CRL lists it")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    from ..support.pki import pem
    _h, ca = open_ca(args, signing=True)
    der = ca.crl(force=True)
    if args.out:
        args.out.write_bytes(der if args.der else pem(der, "X509 CRL").encode())
        emit(args, {"file": str(args.out)}, f"CRL written to {args.out}")
    elif args.json:
        emit(args, {"crl": pem(der, "X509 CRL")})
    else:
        print(pem(der, "X509 CRL"), end="")
    return 0


def cmd_tls_cert(args: argparse.Namespace) -> int:
    from ..servers.ca_home import issue_tls_identity
    _h, ca = open_ca(args, signing=True)
    chain, key = issue_tls_identity(ca, tuple(args.host), args.out, name=args.name)
    emit(args, {"chain": str(chain), "key": str(key), "hosts": list(args.host)},
         f"TLS chain {chain}, key {key} (hosts: {', '.join(args.host)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _h, ca = open_ca(args, signing=False)
    listing = ca.listing()
    emit(args, listing, lambda: _listing_text(listing))
    return 0


def _listing_text(listing: dict) -> str:
    lines = []
    for key, rows in listing.items():
        lines.append(f"{key} ({len(rows)}):" if isinstance(rows, list) else f"{key}: {rows}")
        for row in rows if isinstance(rows, list) else ():
            lines.append("  " + "  ".join(f"{k}={v}" for k, v in row.items() if v not in (None, "")))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from ..support.pki import REASONS, ROLES
    ca = sub.add_parser("ca", help="the certification authority: init, registrations, revocation").add_subparsers(
        dest="ca_command", required=True)

    p = ca.add_parser("init", help="self-sign the CA certificate with a key in a PKCS#11 token")
    ca_location_args(p)
    pin_args(p)
    p.add_argument("--token", default="semper-ca", help="label of the CA's token (default semper-ca)")
    p.add_argument("--create-token", action="store_true", help="create the SoftHSM2 token in the CA folder first")
    p.add_argument("--token-dir", type=Path, help="SoftHSM2 folder holding the token (default: SOFTHSM2_CONF, "
                                                   "else $SEMPER_HOME/tokens)")
    p.add_argument("--module", help="PKCS#11 module (default SoftHSM2)")
    p.add_argument("--name", default="semper CA", help="the CA's name in its certificate")
    p.add_argument("--days", type=int, default=3650, help="validity of the root (days)")
    p.add_argument("--cert-days", type=int, default=730, help="validity of the certificates it issues (days)")
    p.add_argument("--crl-url", help="URL of the CRL, written into issued certificates")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = ca.add_parser("add-person", help="register a person's (or service's) data; prints a one-time key")
    ca_location_args(p)
    p.add_argument("--name", required=True, help="the name the certificate will carry")
    p.add_argument("--email", help="e-mail address (needed for person, seller, bank, ttp)")
    p.add_argument("--role", default="person", choices=sorted(ROLES))
    p.add_argument("--host", action="append", help="host name or IP address (role server; repeat)")
    p.add_argument("-o", "--out", type=new_file, help="write the one-time key to this new file (0600) instead of "
                                                      "printing it")
    json_arg(p)
    p.set_defaults(fn=cmd_add_person)

    p = ca.add_parser("revoke", help="revoke a certificate by serial number")
    ca_location_args(p)
    p.add_argument("serial")
    p.add_argument("--reason", default="unspecified", choices=REASONS)
    json_arg(p)
    p.set_defaults(fn=cmd_revoke)

    p = ca.add_parser("crl", help="sign a fresh CRL and print or write it")
    ca_location_args(p)
    pin_args(p)
    p.add_argument("-o", "--out", type=new_file)
    p.add_argument("--der", action="store_true", help="write DER instead of PEM")
    json_arg(p)
    p.set_defaults(fn=cmd_crl)

    p = ca.add_parser("tls-cert", help="issue a TLS server key and certificate for a service")
    ca_location_args(p)
    pin_args(p)
    p.add_argument("--host", action="append", required=True, help="IP address or host name (repeat)")
    p.add_argument("--name", help="common name (default: the first host)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for cert.pem (chain) and key.pem")
    json_arg(p)
    p.set_defaults(fn=cmd_tls_cert)

    p = ca.add_parser("list", help="registrations and certificates")
    ca_location_args(p)
    json_arg(p)
    p.set_defaults(fn=cmd_list)
