"""The options ``semper shop init`` and ``semper mall init`` (and their ``serve``) share: both set up a seller.

One definition, so the two commands name, check and explain a seller's folder, token, bank account and TLS
key the same way; each adds only what is its own (a shop's PSAM and catalogue, a mall's shops and CA).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import existing_file


def add_seller_args(p: argparse.ArgumentParser, party: str, *, token_help: str, account_help: str) -> None:
    """Folder, name, token, bank account and TLS key of a seller called ``party`` ("shop", "mall")."""
    p.add_argument("-d", "--dir", type=Path, help=f"the {party}'s folder (default: $SEMPER_HOME/{party})")
    p.add_argument("--name", required=True, help=f"the {party}'s name (as in its seller certificate)")
    p.add_argument("--token", required=True, help=token_help)
    p.add_argument("--token-dir", type=Path, help="SoftHSM2 folder of that token (default: SOFTHSM2_CONF, else "
                                                  "$SEMPER_HOME/tokens)")
    p.add_argument("-a", "--account", required=True, help=account_help)
    p.add_argument("--bank", required=True, metavar="URL", help="the bank's URL")
    p.add_argument("--bank-tls-root", type=existing_file, required=True, help="the bank's TLS root (PEM)")
    p.add_argument("--tls-dir", type=Path, required=True,
                   help=f"the {party}'s TLS key and chain from 'semper ca tls-cert --out DIR' (cert.pem, key.pem)")


def add_seller_terms_args(p: argparse.ArgumentParser, modules_help: str) -> None:
    """The payment modules a seller takes and the currency it prices in."""
    p.add_argument("--modules", help=modules_help)
    p.add_argument("--currency", default="EUR")


def add_serve_seller_args(p: argparse.ArgumentParser, party: str) -> None:
    """``semper serve shop|mall``: the folder ``init`` wrote and where the token's PIN comes from."""
    p.add_argument("-d", "--dir", type=Path, help=f"the {party}'s folder (default: $SEMPER_HOME/{party}; "
                                                  f"semper {party} init)")
    p.add_argument("--pin-file", type=existing_file, help=f"read the {party} token's PIN from this file (for services)")
    p.add_argument("--pin-stdin", action="store_true", help=f"read the {party} token's PIN from standard input")
