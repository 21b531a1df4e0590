"""The set-up that `semper ttp init` and `semper certifier init` share: a party whose keys the local CA
certifies gets its token in the CA's token folder.

Why one folder: one process uses one SoftHSM2 folder at a time (switching re-initialises the module and
ends every login), so the party's token lives in the CA's token folder (or the one given), is created
first, and only then are the CA's and the party's keys opened.
"""
from __future__ import annotations

import argparse
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import UsageError, existing_file, note, read_pin_file, read_secret

if TYPE_CHECKING:
    from semper.hsm.softhsm import SoftHsmStore

    from ..servers.ca import CertificationAuthority
    from ..servers.ca_home import CaHome


def read_pin(path: Path | None, from_stdin: bool, what: str) -> bytes:
    """A PIN from its file, else from standard input or the terminal."""
    return read_pin_file(path, what) if path is not None else read_secret(what, from_stdin)


@dataclass
class CaCertifiedToken:
    ca_home: CaHome
    ca: CertificationAuthority
    module: str | None          # the PKCS#11 module of the CA's token (the party's token uses the same)
    store: SoftHsmStore         # the SoftHSM2 folder both tokens are in
    ca_pin: bytes
    pin: bytes                  # the party's token PIN


def add_ca_token_args(p: argparse.ArgumentParser, who: str, label: str) -> None:
    """The options :func:`ca_certified_token` reads (the CA, the party's token, both PINs), declared once for
    every party whose key the CA certifies on a token in its folder; ``who`` as in its messages."""
    from .storage_args import add_db_arg
    party = who.removeprefix("the ")
    p.add_argument("--ca-dir", type=Path, help="the CA's folder (default: $SEMPER_HOME/ca)")
    add_db_arg(p, "the CA folder", "--ca-db", "the CA's ")
    p.add_argument("--ca-pin-file", type=existing_file, help="the CA token's PIN (otherwise asked)")
    p.add_argument("--token", default=label, help=f"label of the {party}'s token (default {label})")
    p.add_argument("--create-token", action="store_true", help="create the SoftHSM2 token first (in the CA's token "
                                                                "folder unless --token-dir)")
    p.add_argument("--token-dir", type=Path, help="SoftHSM2 folder holding the token (default: the CA's)")
    p.add_argument("--pin-file", type=existing_file, help=f"the {party} token's PIN")
    p.add_argument("--pin-stdin", action="store_true", help=f"read the {party} token's PIN from standard input")


def ca_certified_token(args: argparse.Namespace, who: str) -> CaCertifiedToken:
    """Open the CA, choose the token folder, read both PINs and, with --create-token, make the party's
    token; ``who`` names the party in messages ("the third party", "the certifier")."""
    from semper.hsm.softhsm import SoftHsmStore, provision

    from ..servers.ca_home import CaHome
    ca_home = CaHome.default(args.ca_dir, args.ca_db)
    ca = ca_home.open()
    if not ca.initialised:
        raise UsageError(f"no CA in {ca_home.folder} (database {ca_home.db.dsn.display}); {who}'s keys are "
                         "certified by the semper CA (--ca-dir, --ca-db)")
    _label, module, ca_conf = ca.token_settings()
    if args.token_dir:
        store = SoftHsmStore.in_folder(args.token_dir)
    elif ca_conf:
        store = SoftHsmStore.from_conf(Path(ca_conf))
    else:
        raise UsageError(f"the CA's token is not a SoftHSM2 token; give {who}'s token folder (--token-dir)")
    if ca_conf and Path(ca_conf).absolute() != store.conf:
        raise UsageError(f"{who}'s token must be in the CA's token folder ({Path(ca_conf).parent}) while the CA "
                         "certifies it: one process uses one SoftHSM2 folder at a time")
    ca_pin = read_pin(args.ca_pin_file, False, "CA token PIN")
    pin = read_pin(args.pin_file, args.pin_stdin, f"{who.removeprefix('the ')} token PIN")
    if args.create_token:
        so_pin = secrets.token_hex(16).encode()
        provision(store, args.token, pin, so_pin, module=module)
        note(f"created SoftHSM2 token {args.token!r} in {store.token_dir}; its SO PIN (shown once): {so_pin.decode()}")
    return CaCertifiedToken(ca_home, ca, module, store, ca_pin, pin)
