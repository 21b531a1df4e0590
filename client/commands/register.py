"""``semper register``: certify the card's (or token's) signature key at the semper CA.

``--ca`` and ``--ca-root`` default to the preferences ``servers.ca`` and ``trust.ca_root``; the
device to ``signer.*``. See ``client/support/registration.py`` for the order of the steps and why
a failure leaves nothing half-done.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from semper.hardware.signer import Signer

from . import UsageError, card_args, emit, existing_file, json_arg, new_file, read_secret

Device = tuple[Signer, Callable[[bytes], None], Callable[[], bytes]]


@contextmanager
def _card(reader: str | None, image: Path | None) -> Iterator[Device]:
    from ..signers import card_signer
    with card_signer(reader, image) as card:
        yield card.signer, card.store_certificate, card.signer.certificate


@contextmanager
def _token(label: str, module: str | None) -> Iterator[Device]:
    from ..signers import token_signer
    with token_signer(label, module) as signer:
        yield signer, signer.store_certificate, signer.certificate


def cmd_register(args: argparse.Namespace) -> int:
    from ..support import prefs
    from ..support.channels import JsonClient
    from ..support.registration import register
    p = prefs.load()
    ca_url = args.ca or p.get("servers.ca")
    root = args.ca_root or (Path(p.get("trust.ca_root") or "") if p.get("trust.ca_root") else None)
    if not ca_url:
        raise UsageError("which CA? pass --ca URL or set it: semper prefs set servers.ca https://HOST:PORT")
    if root is None:
        raise UsageError("which CA root to pin? pass --ca-root ROOT.pem or: semper prefs set trust.ca_root PATH")
    try:
        root_pem = Path(root).read_text()
    except OSError as e:
        raise UsageError(f"cannot read the CA root {root}: {e.strerror}") from None
    registration_key = args.registration_key
    if args.registration_key_file is not None:
        registration_key = args.registration_key_file.read_text().strip()
    if not registration_key:
        raise UsageError("the one-time registration key the CA operator gave you: pass --registration-key-file FILE "
                         "(or --registration-key KEY, which others can see in the process list)")
    client = JsonClient(ca_url, root_pem, timeout=args.timeout, name="the CA")
    token = args.token or (p.get("signer.token") if p.get("signer.kind") == "token" and not (args.reader or args.image)
                           else None)
    device = _token(token, args.module) if token else _card(args.reader or p.get("signer.reader"), args.image)
    with device as (signer, write, read_back):
        from ..support.registration import device_point
        device_point(signer)                        # no key: say so before asking for the PIN
        pin = read_secret(f"PIN of {signer.label}", args.pin_stdin)
        done = register(signer, pin=pin, client=client, root_pem=root_pem, registration_key=registration_key,
                        name=args.name, email=args.email, write=write, read_back=read_back)
    if args.cert_out is not None:
        args.cert_out.write_bytes(done.saved_to.read_bytes())
    again = " (the CA had issued it before; written again)" if done.repeated else ""
    emit(args, {"serial": done.serial, "name": args.name, "device": signer.label, "copy": str(done.saved_to),
                "repeated": done.repeated},
         f"certificate {done.serial} for {args.name!r} written to {signer.label}{again}; copy in {done.saved_to}")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("register", help="get the card's or token's key certified by the semper CA")
    p.add_argument("--ca", help="the CA's URL, https://HOST:PORT (default: prefs servers.ca)")
    p.add_argument("--ca-root", type=existing_file, help="the CA root certificate to pin, PEM (default: prefs "
                                                          "trust.ca_root)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--registration-key-file", type=existing_file, metavar="FILE",
                     help="a file holding the one-time key the CA operator gave you (semper ca add-person --out)")
    key.add_argument("--registration-key", help="the one-time key itself (visible in the process list)")
    p.add_argument("--name", required=True, help="your name exactly as registered at the CA")
    p.add_argument("--email", help="your e-mail address as registered")
    card_args(p)
    p.add_argument("--token", help="certify the key of this PKCS#11 token instead of a card")
    p.add_argument("--module", help="PKCS#11 module for --token (default SoftHSM2)")
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from standard input")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the CA (default 15)")
    p.add_argument("-o", "--cert-out", type=new_file, metavar="FILE",
                   help="also write the certificate here, PEM (e.g. for 'semper bank open-account --owner-cert')")
    json_arg(p)
    p.set_defaults(fn=cmd_register)
