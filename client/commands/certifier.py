"""``semper serve certifier`` and ``semper certifier certify|revoke``: the service certifier's commands.

The certifier's folder (``client/servers/certifier_home.py``) holds its configuration, its
certificate (role ``certifier``), its TLS identity and its admin secret. ``semper certifier init``
makes it as ``semper ttp init`` makes the third party's: the key on the certifier's token (created
with ``--create-token``, in the CA's token folder), certified by the local semper CA with the role
``certifier`` (its own extended key usage: the CA's key certifies keys, the certifier's key certifies
services), and a CA-issued TLS identity. ``certify`` and ``revoke`` talk to the running service with
the admin secret read from the folder.
"""
from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

from . import (
    CommandFailed,
    UsageError,
    emit,
    existing_file,
    hex_id,
    json_arg,
    new_file,
    positive_int,
    read_pin_file,
    read_secret,
)
from .ca_token import add_ca_token_args, ca_certified_token
from .serve import DEFAULT_PORTS, check_bindable, listen_args

if TYPE_CHECKING:
    from ..servers.certifier import Policy
    from ..support.channels import JsonClient


def _policy(path: Path | None) -> Policy | None:
    """The most this certifier will certify (JSON: modules, max_amount, card_signature, anonymity,
    max_periods, max_days); None: the default policy. Read strictly: a misspelt field is refused."""
    import msgspec

    from ..servers.certifier import Policy
    if path is None:
        return None
    fields = "modules, max_amount, card_signature, anonymity, max_periods, max_days"
    try:
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(Policy.__dataclass_fields__)) if isinstance(data, dict) else []
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        return msgspec.convert(data, Policy)
    except (OSError, ValueError, msgspec.ValidationError) as e:
        raise UsageError(f"--policy {path}: not a certifier policy ({e}); fields: {fields}") from None


def cmd_init(args: argparse.Namespace) -> int:
    """Why this order (as ``semper ttp init``): one process uses one SoftHSM2 folder at a time, so the
    certifier's token lives in the CA's token folder, is created first, and only then are the CA's
    and the certifier's keys opened. Everything the arguments can get wrong is refused first."""
    from cryptography import x509

    from semper.hsm.signer import Pkcs11Signer

    from ..servers.ca_home import issue_tls_identity
    from ..servers.certifier_home import CertifierHome
    from ..support import pki
    home = CertifierHome.default(args.dir)
    if home.config_file.exists():
        raise UsageError(f"{home.folder} already holds a certifier; choose another --dir")
    if not args.url.startswith("https://"):
        raise UsageError(f"--url {args.url}: the certifier is reached over HTTPS (https://HOST:PORT); its "
                         "certificates name the revocation list there")
    policy = _policy(args.policy)
    t = ca_certified_token(args, "the certifier")
    ca_home, ca, module, store, ca_pin, pin = t.ca_home, t.ca, t.module, t.store, t.ca_pin, t.pin
    ca.signer = ca_home.open_signer(ca, ca_pin)
    signer = Pkcs11Signer.open(args.token, module, softhsm_conf=str(store.conf))
    try:
        signer.verify_pin(pin)
        issued = ca.issue_direct(pki.Subject(args.name, "certifier", args.email), signer.public_point())
        signer.store_certificate(issued.certificate)
    finally:
        signer.close()
    hosts = tuple(dict.fromkeys([args.host, "127.0.0.1", "localhost", *(args.tls_host or [])]))
    tls = issue_tls_identity(ca, hosts, home.tls_dir, name=f"{hosts[0]} ({args.name})")
    root = x509.load_der_x509_certificate(ca.certificate())
    home = CertifierHome.create(home.folder, token_label=args.token, softhsm_conf=str(store.conf),
                                certificate=issued.certificate, ca_root=root, url=args.url, tls=tls, policy=policy)
    emit(args, {"folder": str(home.folder), "certificate": str(home.certificate_file), "token": args.token,
                "url": args.url, "serial": issued.serial},
         f"service certifier {args.name!r} set up in {home.folder}; its key stays in token {args.token!r}, "
         f"certified with the role certifier\ngive buyers {home.certificate_file} (their trust.certifiers); "
         f"start it with: semper serve certifier" + (f" --dir {args.dir}" if args.dir else "")
         + f" (its revocation list: {args.url}/revocations)")
    return 0


def cmd_serve_certifier(args: argparse.Namespace) -> int:
    from ..servers.certifier_home import CertifierHome
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    home = CertifierHome.default(args.dir)
    home.config()
    check_bindable(args.host, args.port)
    pin = read_pin_file(args.pin_file, "certifier token PIN") if args.pin_file else read_secret(
        "certifier token PIN", args.pin_stdin)
    opened = home.open(pin, url=args.url)
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, "semper certifier")
    finally:
        opened.close()


def _client(args: argparse.Namespace) -> tuple[JsonClient, dict[str, str]]:
    from ..servers.certifier_home import CertifierHome
    from ..support.channels import JsonClient
    home = CertifierHome.default(args.dir)
    cfg = home.config()
    url = args.url or cfg.get("url") or f"https://127.0.0.1:{DEFAULT_PORTS['certifier']}"
    secret = (home.folder / "admin-secret").read_text().strip()
    return JsonClient(url, (home.folder / "ca.pem").read_text(), name="the certifier"), {
        "Authorization": f"Bearer {secret}"}


def _json_file(path: Path, what: str) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CommandFailed(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise CommandFailed(f"{path}: the {what} is a JSON object")
    return data


def cmd_certify(args: argparse.Namespace) -> int:
    client, headers = _client(args)
    body = {"document": _json_file(args.document, "service document"),
            "permits": _json_file(args.permits, "permits"), "days": args.days}
    with client:
        answer = client.post("/certify", body, headers=headers)
    der = base64.b64decode(answer["certificate"])
    args.out.write_bytes(der)
    emit(args, {"certificate": str(args.out), "bytes": len(der)}, f"service certificate written to {args.out}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    client, headers = _client(args)
    with client:
        answer = client.post("/revoke", {"serial": args.serial.hex().upper(), "reason": args.reason}, headers=headers)
    emit(args, answer, f"revoked {answer['serial']} at {answer['revoked_at']} ({answer['reason']})")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["serve"].add_parser("certifier", help="the service certifier: certifies commerce services, "
                                                     "publishes its revocation list")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (default: $SEMPER_HOME/certifier)")
    p.add_argument("--pin-file", type=existing_file, help="read the certifier token's PIN from this file")
    p.add_argument("--pin-stdin", action="store_true", help="read the certifier token's PIN from standard input")
    p.add_argument("--url", help="where it is reached (named in its certificates; default: as configured)")
    listen_args(p, "certifier")
    p.set_defaults(fn=cmd_serve_certifier)

    c = sub.add_parser("certifier", help="the service certifier's operator commands").add_subparsers(
        dest="certifier_command", required=True)
    p = c.add_parser("init", help="make the certifier's key on its token, have the CA certify it (role certifier), "
                                  "write its folder")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (default: $SEMPER_HOME/certifier)")
    add_ca_token_args(p, "the certifier", "semper-certifier")
    p.add_argument("--name", default="semper service certifier", help="the name in its certificate")
    p.add_argument("--email", help="its e-mail address (certificate; optional)")
    p.add_argument("--url", default=f"https://127.0.0.1:{DEFAULT_PORTS['certifier']}",
                   help="where it will be served: its certificates name its revocation list there (default "
                        f"https://127.0.0.1:{DEFAULT_PORTS['certifier']})")
    p.add_argument("--host", default="127.0.0.1", help="its service's address (TLS certificate)")
    p.add_argument("--tls-host", action="append", help="another name for the TLS certificate (repeat)")
    p.add_argument("--policy", type=existing_file, help="the most it certifies, JSON (modules, max_amount, "
                                                        "card_signature, anonymity, max_periods, max_days; default: "
                                                        "every module, 1000.00 a payment, 12 periods, 366 days)")
    json_arg(p)
    p.set_defaults(fn=cmd_init)
    p = c.add_parser("certify", help="evaluate a service document and have the running certifier sign it")
    p.add_argument("document", type=existing_file, help="the service document (JSON)")
    p.add_argument("--permits", type=existing_file, required=True, help="what it may do (JSON: modules, max_amount, "
                                                                        "currency, card_signature, anonymity, "
                                                                        "max_periods)")
    p.add_argument("--days", type=positive_int, default=90, help="validity in days (default 90)")
    p.add_argument("-o", "--out", type=new_file, required=True, help="write the certificate (DER) here")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (its admin secret; default: "
                                                  "$SEMPER_HOME/certifier)")
    p.add_argument("--url", help="the running certifier (default: as configured)")
    json_arg(p)
    p.set_defaults(fn=cmd_certify)
    p = c.add_parser("revoke", help="revoke a service certificate (it goes on the revocation list)")
    p.add_argument("serial", type=hex_id(32), help="the certificate's serial (32 hex digits)")
    p.add_argument("--reason", default="unspecified")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (default $SEMPER_HOME/certifier)")
    p.add_argument("--url", help="the running certifier (default: as configured)")
    json_arg(p)
    p.set_defaults(fn=cmd_revoke)
