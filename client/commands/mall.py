"""``semper mall init`` and ``semper serve mall``: the electronic mall from the command line.

The mall is a shop of its own over other shops (``client/servers/mall.py``). Its operator sets it up
as a seller's: its token key registered at the CA as a seller (``semper token init``, ``semper ca
add-person --role seller``, ``semper register --token``) and an account at the bank for that key.
``mall init`` then has the local semper CA certify the same key a second time, with the role person:
the mall's purchasing agent orders from the shops as their customer, and a shop takes orders only
from persons (the operator opens the CA with its own PIN, as for ``semper ttp init``). The shops are
named by URL (``--shop KEY=URL``); their catalogues are read now (a shop that cannot be read is said
at once) and again whenever the mall starts, which is its index. ``mall init`` also writes the mall's
own service, ``services/mall-basket.json``, which the certifier must certify before buyers run it.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import CommandFailed, UsageError, emit, existing_file, json_arg, read_pin_file, read_secret
from .serve import check_bindable, listen_args

_KEY = re.compile(r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")


def _shops(raw: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for entry in raw:
        key, sep, url = entry.partition("=")
        if not sep or not url.startswith("https://"):
            raise UsageError(f"--shop {entry!r}: write KEY=https://HOST:PORT (the shop's URL, over HTTPS)")
        if not _KEY.match(key) or "--" in key:
            raise UsageError(f"--shop {entry!r}: the key names the shop in the mall's items (KEY--SKU): lower-case "
                             "letters, digits and single '-', at most 20")
        if key in {k for k, _ in out}:
            raise UsageError(f"--shop: the key {key!r} is given twice")
        out.append((key, url.rstrip("/")))
    return out


def cmd_init(args: argparse.Namespace) -> int:
    """Why this order: the arguments and files first (exit 2), then the shops' catalogues (a shop that
    cannot be read fails the set-up, exit 1), and the CA's token last: one process uses one SoftHSM2
    folder at a time, and the mall's token is only read before it (its certificate), not logged in."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ..commerce.documents import has_role
    from ..commerce.errors import CommerceError
    from ..servers.bank_home import check_tls_identity
    from ..servers.ca_home import CaHome
    from ..servers.mall_home import BUYER_MODULES, MallHome, shop_catalogue
    from ..signers import softhsm_store
    from ..support import pki
    from ..support.money import parse_currency
    from .shop import _cert, _pem, _seller_certificate
    home = MallHome.default(args.dir)
    if home.config_file.exists():
        raise UsageError(f"{home.folder} already holds a mall; choose another --dir")
    shops = _shops(args.shop or [])
    if len(shops) < 1:
        raise UsageError("which shops does the mall offer? --shop KEY=https://HOST:PORT (repeat)")
    modules = tuple(m.strip() for m in args.modules.split(",")) if args.modules else BUYER_MODULES
    unknown = [m for m in modules if m not in BUYER_MODULES]
    if unknown:
        raise UsageError(f"the mall takes online payments only: {', '.join(unknown)} is not one of "
                         f"{', '.join(BUYER_MODULES)}")
    tls = (args.tls_dir / "cert.pem", args.tls_dir / "key.pem")
    for f in tls:
        if not f.is_file():
            raise UsageError(f"no {f.name} in {args.tls_dir}: make the mall's TLS identity with 'semper ca tls-cert "
                             f"--host HOST --out {args.tls_dir}'")
    ca_home = CaHome.default(args.ca_dir, args.ca_db)
    ca = ca_home.open()
    if not ca.initialised:
        raise UsageError(f"no CA in {ca_home.folder} (database {ca_home.db.dsn.display}); the mall's purchasing "
                         "certificate is issued by the semper CA (--ca-dir, --ca-db)")
    ca_root = x509.load_der_x509_certificate(ca.certificate())
    if check_tls_identity(*tls).public_bytes(_pem()) != ca_root.public_bytes(_pem()):
        raise UsageError(f"the TLS identity in {args.tls_dir} is not issued by the CA in {ca_home.folder}, which "
                         "buyers pin")
    _cert(args.bank_tls_root, "the bank's TLS root")
    store = softhsm_store(args.token_dir, create=False)
    if store is None:
        raise UsageError(f"no token folder at {args.token_dir or 'the default place'}; make the mall's token with "
                         f"'semper token init --label {args.token}' and register its key as a seller")
    seller = _seller_certificate(args.token, store.conf, ca_root)
    if not has_role(seller, "seller"):
        raise UsageError(f"the certificate on token {args.token!r} is not a seller's: buyers take offers from sellers "
                         "only (semper ca add-person --role seller; semper register --token)")
    root_pem = ca_root.public_bytes(_pem()).decode()
    names = {}
    for key, url in shops:
        try:
            names[key] = shop_catalogue(url, root_pem, timeout=args.timeout)[0]
        except CommerceError as e:
            raise CommandFailed(f"{e}; nothing was set up") from None
    ca_pin = read_pin_file(args.ca_pin_file, "CA token PIN") if args.ca_pin_file else read_secret("CA token PIN",
                                                                                                  False)
    ca.signer = ca_home.open_signer(ca, ca_pin)
    point = seller.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    purchasing = ca.issue_direct(pki.Subject(f"{args.name} purchasing", "person", args.purchasing_email), point)
    home = MallHome.create(home.folder, name=args.name, token_label=args.token, softhsm_conf=str(store.conf),
                           account=args.account, bank_url=args.bank, bank_tls_root=args.bank_tls_root,
                           ca_root=ca_root, certificate=seller, purchasing=purchasing.certificate, tls=tls,
                           shops=shops, modules=modules, currency=parse_currency(args.currency))
    emit(args, {"folder": str(home.folder), "name": args.name, "seller": seller.subject.rfc4514_string(),
                "purchasing_serial": purchasing.serial, "modules": list(modules),
                "shops": [{"key": k, "name": names[k], "url": u} for k, u in shops],
                "service": str(home.services_dir / "mall-basket.json")},
         f"mall {args.name!r} set up in {home.folder} over {len(shops)} shop(s) ("
         + ", ".join(f"{k}: {names[k]}" for k, _ in shops) + f"); buyers pay it with {', '.join(modules)}; its "
         f"purchasing certificate {purchasing.serial} (role person) orders from the shops\n"
         f"have its service certified: semper certifier certify {home.services_dir / 'mall-basket.json'} --permits "
         f"FILE -o {home.services_dir / 'mall-basket.cert'}\nstart it with: semper serve mall"
         + (f" --dir {args.dir}" if args.dir else ""))
    return 0


def cmd_serve_mall(args: argparse.Namespace) -> int:
    from ..servers.mall_home import MallHome
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    home = MallHome.default(args.dir)
    home.config()                                # no mall there: say so before asking for the PIN
    check_bindable(args.host, args.port)
    pin = read_pin_file(args.pin_file, "mall token PIN") if args.pin_file else read_secret("mall token PIN",
                                                                                          args.pin_stdin)
    opened = home.open(pin)
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper mall {opened.mall.name!r}")
    finally:
        opened.close()


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from .seller_args import add_seller_args, add_seller_terms_args, add_serve_seller_args
    from .storage_args import add_db_arg
    mall = sub.add_parser("mall", help="the electronic mall: one shop over several shops").add_subparsers(
        dest="mall_command", required=True)
    p = mall.add_parser("init", help="write the mall's folder: its token key's certificates, bank, shops, service")
    add_seller_args(p, "mall", token_help="label of the mall's token (its key registered at the CA as a seller)",
                    account_help="the mall's account at the bank (opened for its key): buyers pay it, it pays "
                                 "the shops")
    p.add_argument("--shop", action="append", metavar="KEY=URL",
                   help="a shop in the mall: its key (in the mall's item names, KEY--SKU) and URL (repeat)")
    p.add_argument("--ca-dir", type=Path, help="the CA's folder (default: $SEMPER_HOME/ca): it certifies the "
                                               "mall's key as a customer of the shops")
    add_db_arg(p, "the CA folder", "--ca-db", "the CA's ")
    p.add_argument("--ca-pin-file", type=existing_file, help="the CA token's PIN (otherwise asked)")
    p.add_argument("--purchasing-email", required=True, help="the e-mail address of the mall's purchasing (its "
                                                              "person certificate)")
    add_seller_terms_args(p, "what buyers pay the mall with, comma-separated (default cheque,setpay)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each shop's catalogue")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = groups["serve"].add_parser("mall", help="the electronic mall: its index of the shops, offers, one payment, "
                                                "settlement with each shop")
    add_serve_seller_args(p, "mall")
    listen_args(p, "mall")
    p.set_defaults(fn=cmd_serve_mall)
