"""``semper shop init|clear`` and ``semper serve shop``: the seller's shop from the command line.

``shop init`` writes the shop's folder (``client/servers/shop_home.py``) from the pieces the other
operators hand over: the seller's token (its key certified by the CA: ``semper register --token``),
its account at the bank, the bank's URL and TLS root, the CA root, the purse scheme root, a TLS
identity from ``semper ca tls-cert``, the PSAM, and the third party's URL, certificate and escrow
statement. Everything is checked before anything is written. ``serve shop`` runs it over HTTPS
(catalogue, offers, orders, payments, delivery, fair exchanges), its signing key in its token and
its PSAM in its own reader. ``shop clear`` asks the running shop to clear its PSAM batch at the
acquirer, with the admin secret from the shop's folder.

``--workers N`` runs N worker processes on one listening socket, each PSAM in a device process of its
own (``client/servers/psam_device.py``), the deals in the shop's database (``--db``); the parent
restarts what dies (``client/support/prefork.py``; docs/deployment.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..support.money import format_amount, parse_currency
from . import (
    CommandFailed,
    UsageError,
    card_image,
    emit,
    existing_file,
    json_arg,
    read_pin_file,
    read_secret,
)
from .seller_args import add_seller_args, add_seller_terms_args, add_serve_seller_args
from .serve import (
    DEFAULT_PORTS,
    check_bindable,
    check_workers,
    listen_args,
    serve_as_worker,
    serve_workers,
    worker_args,
)
from .storage_args import add_db_arg

SOCKET_PATH_MAX = 100            # a unix socket's path must fit in 108 bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import Certificate

    from ..servers.shop_home import ShopHome

MODULES = ("card-purse", "setpay", "cheque", "ecash")


def _cert(path: Path, what: str) -> Certificate:
    from cryptography import x509
    data = path.read_bytes()
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError(f"{path} is not an X.509 certificate ({what})") from None


def _seller_certificate(label: str, conf: Path, ca_root: Any) -> Any:
    """The certificate on the seller's token, which must chain to the CA root buyers pin."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from semper.hardware import errors as hw
    from semper.hsm.signer import Pkcs11Signer
    try:
        with Pkcs11Signer.open(label, softhsm_conf=str(conf)) as signer:
            der = signer.certificate()
    except hw.NotFoundError:
        raise UsageError(f"token {label!r} holds no certificate yet: register its key at the CA first (semper ca "
                         f"add-person --role seller ...; semper register --token {label} ...)") from None
    cert = x509.load_der_x509_certificate(der)
    try:
        cert.verify_directly_issued_by(ca_root)
    except (ValueError, TypeError, InvalidSignature):
        raise UsageError(f"the certificate on token {label!r} ({cert.subject.rfc4514_string()}) is not issued by "
                         "the --ca-root given: buyers would refuse the shop's offers") from None
    return cert


def cmd_init(args: argparse.Namespace) -> int:
    from ..commerce.catalogue import Catalogue, demo_catalogue
    from ..commerce.errors import CommerceError
    from ..servers.bank_home import check_tls_identity
    from ..servers.shop_home import ShopHome
    from ..signers import softhsm_store
    home = ShopHome.default(args.dir)
    if home.config_file.exists():
        raise UsageError(f"{home.folder} already holds a shop; choose another --dir")
    ttp = [args.ttp, args.ttp_cert, args.escrow]
    if any(ttp) and not all(ttp):
        raise UsageError("fair exchanges need all three of the third party's --ttp URL, --ttp-cert FILE and "
                         "--escrow FILE (from 'semper ttp init')")
    if args.psam_reader and args.psam_image:
        raise UsageError("the PSAM is in a reader (--psam-reader) or an image (--psam-image), not both")
    modules = tuple(m.strip() for m in args.modules.split(",")) if args.modules else MODULES
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise UsageError(f"unknown payment module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if "card-purse" in modules and not (args.psam_reader or args.psam_image):
        raise UsageError("card purse payments need the shop's PSAM: --psam-reader NAME or --psam-image FILE (or "
                         "leave card-purse out of --modules)")
    tls = (args.tls_dir / "cert.pem", args.tls_dir / "key.pem")
    for f in tls:
        if not f.is_file():
            raise UsageError(f"no {f.name} in {args.tls_dir}: make the shop's TLS identity with 'semper ca tls-cert "
                             f"--host HOST --out {args.tls_dir}'")
    tls_root = check_tls_identity(*tls)
    ca_root = _cert(args.ca_root, "the CA root")
    if tls_root.public_bytes(_pem()) != ca_root.public_bytes(_pem()):
        raise UsageError(f"the TLS identity in {args.tls_dir} is not issued by the CA of --ca-root, which buyers pin")
    purse_root = _cert(args.purse_root, "the purse scheme root")
    _cert(args.bank_tls_root, "the bank's TLS root")
    store = softhsm_store(args.token_dir, create=False)
    if store is None:
        raise UsageError(f"no token folder at {args.token_dir or 'the default place'}; make the seller's token with "
                         f"'semper token init --label {args.token}'")
    seller = _seller_certificate(args.token, store.conf, ca_root)
    ttp_cert = _cert(args.ttp_cert, "the third party's certificate") if args.ttp_cert else None
    try:
        catalogue = Catalogue.load(args.catalogue) if args.catalogue else demo_catalogue()
    except CommerceError as e:
        raise UsageError(str(e)) from None
    home = ShopHome.create(home.folder, name=args.name, token_label=args.token, softhsm_conf=str(store.conf),
                           account=args.account, bank_url=args.bank, bank_tls_root=args.bank_tls_root,
                           ca_root=ca_root, purse_root=purse_root, catalogue=catalogue, tls=tls,
                           psam_reader=args.psam_reader, psam_image=args.psam_image.absolute() if args.psam_image
                           else None, ttp_url=args.ttp, ttp_cert=ttp_cert,
                           escrow=args.escrow.read_bytes() if args.escrow else None, modules=modules,
                           exchange_port=args.exchange_port, currency=parse_currency(args.currency))
    emit(args, {"folder": str(home.folder), "name": args.name, "seller": seller.subject.rfc4514_string(),
                "modules": list(modules), "items": sorted(catalogue.items), "fair_exchange": bool(args.ttp)},
         f"shop {args.name!r} set up in {home.folder}: it signs as {seller.subject.rfc4514_string()} (token "
         f"{args.token!r}), takes {', '.join(modules)}, sells {', '.join(sorted(catalogue.items))}"
         + ("" if args.catalogue else " (the demo catalogue; --catalogue FILE for your own)")
         + ("; fair exchanges through " + args.ttp if args.ttp else "; no third party: no fair exchanges")
         + "\nstart it with: semper serve shop" + (f" --dir {args.dir}" if args.dir else ""))
    return 0


def _pem() -> serialization.Encoding:
    from cryptography.hazmat.primitives.serialization import Encoding
    return Encoding.PEM


def cmd_clear(args: argparse.Namespace) -> int:
    from ..servers.shop_home import ShopHome
    from ..support.channels import ChannelError, JsonClient
    home = ShopHome.default(args.dir)
    cfg = home.config()
    url = args.url or f"https://127.0.0.1:{DEFAULT_PORTS['shop']}"
    secret = (home.folder / "admin-secret").read_text().strip()
    try:
        with JsonClient(url, (home.folder / "ca.pem").read_text(), timeout=args.timeout, name="the shop") as shop:
            answer = shop.post("/admin/clear", {}, {"Authorization": f"Bearer {secret}"})
    except ChannelError as e:
        raise CommandFailed(f"the shop at {url} did not clear: {e}") from None
    cleared = answer.get("cleared")
    currency = int(cfg.get("currency", 978))
    if not cleared:
        emit(args, {"cleared": None}, "nothing to clear: the PSAM's batch is empty and every closed batch was cleared")
        return 0
    paid, held = int(cleared.get("total", 0)), cleared.get("held") or []
    emit(args, {"cleared": cleared},
         f"cleared batch {cleared.get('batch', '?')}: {cleared.get('count', 0)} debit(s), "
         f"{format_amount(paid, currency)} paid to account {cfg['account']}"
         + (f"; {len(held)} proof(s) held by the acquirer (see --json)" if held else ""))
    return 0


def cmd_serve_shop(args: argparse.Namespace) -> int:
    from ..servers.shop_home import ShopHome
    check_workers(args)
    home = ShopHome.default(args.dir)
    home.config()                                # no shop there: say so before asking for the PIN
    if args.listen_fd is None:
        check_bindable(args.host, args.port)
    else:
        from ..support.prefork import die_with_parent
        die_with_parent(args.parent_pid)
    pin = read_pin_file(args.pin_file, "seller token PIN") if args.pin_file else read_secret("shop token PIN",
                                                                                              args.pin_stdin)
    if args.listen_fd is not None:
        return _serve_worker(args, home, pin)
    if args.workers > 1:
        return _serve_workers(args, home, pin)
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    opened = home.open(pin, db=args.db)
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper shop {opened.shop.name!r}")
    finally:
        opened.close()


def _psam_sockets(home: ShopHome, count: int) -> list[Path]:
    """Where the PSAM devices listen: ``run/`` in the shop's folder (0700), or, when that path is too long
    for a unix socket, a private folder of the same mode under the temporary folder."""
    run = Path(home.run_dir)
    run.mkdir(mode=0o700, exist_ok=True)
    run.chmod(0o700)
    paths = [run / f"psam-{i}.sock" for i in range(count)]
    if paths and len(str(paths[-1])) > SOCKET_PATH_MAX:
        short = Path(tempfile.mkdtemp(prefix="semper-psam-"))           # mkdtemp: mode 0700
        paths = [short / f"psam-{i}.sock" for i in range(count)]
    return paths


def _serve_workers(args: argparse.Namespace, home: ShopHome, pin: bytes) -> int:
    """The parent: one PSAM device process per PSAM (the one owner of its reader), then the workers."""
    from ..support.prefork import Child
    cfg = home.config()
    sockets = _psam_sockets(home, len(home.psam_specs()))
    folder = str(home.folder)
    devices = [Child(f"PSAM device {i}", [sys.executable, "-m", "semper.client.servers.psam_device", "--dir", folder,
                                          "--index", str(i), "--socket", str(path)], "listening on")
               for i, path in enumerate(sockets)]
    argv = [sys.executable, "-m", "semper.client.cli", "serve", "shop", "--dir", folder]
    if args.db:
        argv += ["--db", args.db]
    for path in sockets:
        argv += ["--psam-socket", str(path)]
    return serve_workers(args, f"semper shop {cfg['name']!r}", argv, pin, devices)


def _serve_worker(args: argparse.Namespace, home: ShopHome, pin: bytes) -> int:
    """One worker of ``--workers N``: the parent's socket, the PSAM devices' sockets, the shared database."""
    opened = home.open(pin, db=args.db, psam_sockets=list(args.psam_socket or []),
                       worker=args.worker, workers=args.workers)
    try:
        return serve_as_worker(args, opened.app(), opened.tls, "semper shop")
    finally:
        opened.close()


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    shop = sub.add_parser("shop", help="the seller's shop: set it up, clear its PSAM batch").add_subparsers(
        dest="shop_command", required=True)
    p = shop.add_parser("init", help="write the shop's folder from the other operators' pieces")
    add_seller_args(p, "shop", token_help="label of the seller's token (its key registered at the CA)",
                    account_help="the seller's account at the bank (payments go there)")
    p.add_argument("--ca-root", type=existing_file, required=True, help="the CA root (PEM): buyers' certificates")
    p.add_argument("--purse-root", type=existing_file, required=True, help="the purse scheme root (PEM)")
    p.add_argument("--psam-reader", help="the PC/SC reader holding the shop's PSAM")
    p.add_argument("--psam-image", type=card_image, help="or: a PSAM image opened in the shop's process")
    p.add_argument("--ttp", metavar="URL", help="the third party's URL (fair exchanges)")
    p.add_argument("--ttp-cert", type=existing_file, help="the third party's certificate (ttp.pem from ttp init)")
    p.add_argument("--escrow", type=existing_file, help="the third party's escrow statement (escrow.der)")
    p.add_argument("--catalogue", type=existing_file, help="the catalogue, JSON (default: the demo catalogue)")
    add_seller_terms_args(p, f"payment modules it takes, comma-separated (default {','.join(MODULES)})")
    from . import port
    p.add_argument("--exchange-port", type=port, default=0, help="port of its fair-exchange mailbox (default: any)")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = shop.add_parser("clear", help="have the running shop clear its PSAM batch at the acquirer")
    p.add_argument("-d", "--dir", type=Path, help="the shop's folder (its admin secret; default: $SEMPER_HOME/shop)")
    p.add_argument("--url", help=f"the running shop (default https://127.0.0.1:{DEFAULT_PORTS['shop']})")
    p.add_argument("--timeout", type=float, default=60.0)
    json_arg(p)
    p.set_defaults(fn=cmd_clear)

    p = groups["serve"].add_parser("shop", help="the seller's shop: signed offers, orders, payments, delivery")
    add_serve_seller_args(p, "shop")
    listen_args(p, "shop")
    add_db_arg(p, "the shop folder (evidence.sqlite3, or shop.db where a shop set up before 2026-12-07 has it)")
    worker_args(p, "shop")                       # each PSAM in a device process of its own beside the workers
    p.add_argument("--psam-socket", type=Path, action="append", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_serve_shop)
