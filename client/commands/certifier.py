"""``semper serve certifier`` and ``semper certifier certify|revoke``: the service certifier's commands.

The certifier's folder (``client/servers/certifier_home.py``) holds its configuration, its
certificate (role ``certifier``), its TLS identity and its admin secret; ``semper demo`` and the
tests' world make one (``World.start_certifier``). ``certify`` and ``revoke`` talk to the running
service with the admin secret read from the folder.
"""
from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

from . import CommandFailed, emit, existing_file, json_arg, new_file, read_pin_file, read_secret
from .serve import DEFAULT_PORTS, check_bindable, listen_args


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


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
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
        answer = client.post("/revoke", {"serial": args.serial, "reason": args.reason}, headers=headers)
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
    p = c.add_parser("certify", help="evaluate a service document and have the running certifier sign it")
    p.add_argument("document", type=existing_file, help="the service document (JSON)")
    p.add_argument("--permits", type=existing_file, required=True, help="what it may do (JSON: modules, max_amount, "
                                                                        "currency, card_signature, anonymity, "
                                                                        "max_periods)")
    p.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    p.add_argument("-o", "--out", type=new_file, required=True, help="write the certificate (DER) here")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (its admin secret; default: "
                                                  "$SEMPER_HOME/certifier)")
    p.add_argument("--url", help="the running certifier (default: as configured)")
    json_arg(p)
    p.set_defaults(fn=cmd_certify)
    p = c.add_parser("revoke", help="revoke a service certificate (it goes on the revocation list)")
    p.add_argument("serial", help="the certificate's serial (32 hex digits)")
    p.add_argument("--reason", default="unspecified")
    p.add_argument("-d", "--dir", type=Path, help="the certifier's folder (default $SEMPER_HOME/certifier)")
    p.add_argument("--url", help="the running certifier (default: as configured)")
    json_arg(p)
    p.set_defaults(fn=cmd_revoke)
