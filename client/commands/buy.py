"""``semper buy [SHOP_URL] ITEM...``: the buyer's business application on the command line.

It only asks: which shop, which items (``sku`` or ``sku:quantity``), which workflow, the order form
(``--form key=value``) and a preferred payment module. Checking the seller's offer, showing it,
confirming, the PIN, paying and checking the delivery all happen in the commerce layer and the
TINGUIN. In a terminal a person answers the TINGUIN, which draws on the terminal (standard error),
so the result still goes to standard output when that is redirected (``semper buy ... -j > deal.json``);
otherwise ``--script PIN_FILE`` lets a scripted user answer the same screens (it says so on every
screen and in the evidence).

What a deal needs and the command can see beforehand (a payment module that is installed, the bank
for cheques and account payments, coins for e-cash, the third party and the purse root for a fair
exchange) is checked before the TINGUIN opens, and a missing piece is named: the TINGUIN would
otherwise only see an offer it cannot accept. For ``--service NAME`` that is what the service's own
protocol needs (an information or contract service is a fair exchange, whatever ``--workflow``
says): its document is read from the shop first for that alone; whether it may run at all is
decided after download, by its certificate (``commerce/services/download.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import UsageError, card_image, emit, existing_file, json_arg, new_file, note, positive_float

NEEDS_BANK = ("setpay", "cheque", "ecash")
FAIR_EXCHANGE = ("information", "contract")


def _items(raw: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in raw:
        sku, _, qty = item.partition(":")
        try:
            n = int(qty, 10) if qty else 1
        except ValueError:
            n = 0
        if not sku or n < 1:
            raise UsageError(f"{item!r}: write an item as SKU or SKU:QUANTITY (a quantity of 1 or more)")
        out.append((sku, n))
    return out


def _form(raw: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in raw or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--form {pair!r}: write KEY=VALUE")
        out[key.strip()] = value
    return out


def _pref_path(p: Any, key: str) -> Path | None:
    value = p.get(key)
    return Path(value) if value else None


def _file(path: Path | None, what: str) -> Path | None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"no such file: {path} ({what})")
    return path


def _service_name(text: str) -> str:
    from ..commerce.services.document import valid_name
    if not valid_name(text):
        raise argparse.ArgumentTypeError("a service name: lower-case letters, digits and '-', e.g. tea-news")
    return text


def _shop_and_items(args: argparse.Namespace, p: Any) -> tuple[str, list[str]]:
    words = list(args.target)
    if words and words[0].startswith(("https://", "http://")):
        return words[0], words[1:]
    shop = p.get("servers.shop")
    if not shop:
        raise UsageError("which shop? give its URL first (semper buy https://HOST:PORT ITEM...) or set it: semper "
                         "prefs set servers.shop https://HOST:PORT")
    return shop, words


def _check_module(name: str | None, source: str) -> str | None:
    if name is None:
        return None
    from ..payment.registry import discover
    installed = sorted(f.name for f in discover() if f.cls is not None)
    if name not in installed:
        raise UsageError(f"{source}: there is no payment module {name!r}; installed: {', '.join(installed)} "
                         "(semper payment modules)")
    return name


class _Say:
    """The scripted user's lines go to standard error; the reasons it declined are kept for the result."""

    def __init__(self) -> None:
        self.declined: str | None = None

    def __call__(self, line: str) -> None:
        if "does not accept" in line and "declined" in line:
            self.declined = line.split(": ", 1)[-1]
        print(line, file=sys.stderr, flush=True)


def _empty_archive(path: Path) -> bool:
    from ..support.archive import Archive
    try:
        with Archive.open(path) as archive:
            return not archive.deals() and archive.last_checkpoint() is None
    except Exception:                # not ours to judge here: leave it
        return False


@dataclass
class BuyerSettings:
    config: Any                    # client.commerce.setup.BuyerConfig
    reader: str | None
    archive: Path
    pay: str | None


@dataclass(frozen=True)
class ServiceNeeds:
    """What a downloaded service's document says it will do, read only to name missing prerequisites."""

    name: str
    protocol: str
    modules: tuple[str, ...] = ()

    def deal(self) -> str:
        return f"the service {self.name!r} is a{'n' if self.protocol[0] in 'aeiou' else ''} {self.protocol} deal"


def service_needs(shop_url: str, name: str, root_pem: str) -> ServiceNeeds | None:
    """The protocol and payment modules the shop's service ``name`` declares (None: not to be had now; the
    download in the TINGUIN then names why). Nothing here is trusted beyond naming what is missing: the
    document is checked against its certificate after download, and the certificate is enforced."""
    from ..commerce.services.document import PROTOCOLS
    from ..support.channels import ChannelError, JsonClient
    try:
        with JsonClient(shop_url, root_pem, timeout=10.0, name="the shop") as shop:
            doc = shop.get(f"/services/{name}").get("document")
    except ChannelError:
        return None
    if not isinstance(doc, dict) or doc.get("protocol") not in PROTOCOLS:
        return None
    payment = doc.get("payment")
    modules = payment.get("modules") if isinstance(payment, dict) else None
    return ServiceNeeds(name, str(doc["protocol"]),
                        tuple(m for m in modules if isinstance(m, str)) if isinstance(modules, list) else ())


def _ca_root(args: argparse.Namespace, p: Any) -> Path:
    ca_root = getattr(args, "ca_root", None) or _file(_pref_path(p, "trust.ca_root"), "prefs trust.ca_root")
    if ca_root is None:
        raise UsageError("which CA root do you trust? pass --ca-root (or: semper prefs set trust.ca_root FILE)")
    return Path(ca_root)


def buyer_settings(args: argparse.Namespace, *, workflow: str | None, pay: str | None = None, anonymous: bool = False,
                   archive: Path | None = None, shop_url: str = "", service: ServiceNeeds | None = None
                   ) -> BuyerSettings:
    """Everything the buyer's client needs, from the arguments and else the preferences; what the deal
    will need and is missing is said here, before the TINGUIN opens (UsageError). ``service``: a
    downloaded service's needs (its protocol replaces ``workflow``). ``workflow=None``: any deal (the local
    agent learns each deal's workflow only when a page hands it over): nothing a workflow needs is checked
    here, and the third party is asked for its certificate whenever one is configured."""
    from cryptography import x509

    from ..commerce.setup import BuyerConfig
    from ..support import prefs
    from ..support.channels import JsonClient
    from ..support.paths import semper_home
    from .wallet import default_wallet
    p = prefs.load()

    def arg(name: str) -> Any:
        return getattr(args, name, None)            # not every command has every option
    root_pem = _ca_root(args, p).read_text()
    online: tuple[str, ...] = (pay,) if pay in NEEDS_BANK else ()
    if service is not None:
        workflow = service.protocol
        if pay is None and service.modules and all(m in NEEDS_BANK for m in service.modules):
            online = service.modules               # it takes only modules that need the bank
    deal = f"{service.deal()}," if service is not None else f"a {workflow} deal is"
    home = semper_home()
    bank_url = arg("bank") or p.get("servers.bank")
    bank_root = arg("bank_tls_root") or _file(_pref_path(p, "trust.bank_tls_root"), "prefs trust.bank_tls_root")
    account = arg("account") or p.get("payment.account")
    purse_root = arg("purse_root") or _file(_pref_path(p, "trust.purse_root"), "prefs trust.purse_root")
    ttp_url = arg("ttp") or p.get("servers.ttp")
    tls_dir = arg("tls_dir") or home / "client-tls"
    wallet = arg("wallet") or default_wallet()
    if online:
        missing = [w for w, v in (("--bank URL (or prefs servers.bank)", bank_url),
                                  ("--bank-tls-root FILE (or prefs trust.bank_tls_root)", bank_root),
                                  ("--account ACCOUNT (or prefs payment.account)", account)) if not v]
        if missing:
            paying = (f"paying with {pay}" if service is None
                      else f"{service.deal()} paid with {' or '.join(online)}, which")
            raise UsageError(f"{paying} needs the bank: " + ", ".join(missing))
    if pay == "ecash" and not wallet.exists():
        raise UsageError(f"paying with e-cash needs coins, and there is no wallet at {wallet}: withdraw some first "
                         "(semper wallet withdraw AMOUNT)")
    if workflow in FAIR_EXCHANGE:
        if not ttp_url:
            raise UsageError(f"{deal} a fair exchange through the third party: pass --ttp URL (or semper prefs "
                             "set servers.ttp URL)")
        if not (tls_dir / "cert.pem").is_file():
            raise UsageError(f"{deal} a fair exchange: it needs your mailbox's TLS key and chain in {tls_dir} (the "
                             f"CA operator makes them: semper ca tls-cert --host 127.0.0.1 --out {tls_dir}; or pass "
                             "--tls-dir)")
    purse_pay = pay == "card-purse" or (pay is None and (service is None or not service.modules
                                                         or "card-purse" in service.modules))
    if workflow == "information" and purse_pay and purse_root is None:
        raise UsageError("in an information purchase the payment is exchanged through the third party, which checks a "
                         "card purse payment against the purse scheme's root: pass --purse-root FILE (or semper "
                         "prefs set trust.purse_root FILE), or pay another way (--pay)")
    ttp_cert = escrow = None
    if ttp_url and (workflow is None or workflow in FAIR_EXCHANGE):
        import base64
        with JsonClient(ttp_url, root_pem, name="the third party") as t:
            ttp_cert = x509.load_pem_x509_certificate(str(t.get("/certificate")["certificate"]).encode())
            escrow = base64.b64decode(str(t.get("/escrow-key")["statement"]))
    if archive is None:
        home.mkdir(parents=True, exist_ok=True)         # semper's own folder
        archive = home / "evidence.sqlite3"
    if not archive.parent.is_dir():
        raise UsageError(f"the folder of the evidence archive {archive} does not exist")
    cfg = BuyerConfig(
        shop_url=shop_url, ca_root_pem=root_pem, archive=archive,
        purse_root=x509.load_pem_x509_certificate(Path(purse_root).read_bytes()) if purse_root else None,
        bank_url=bank_url, bank_tls_root=bank_root, account=account, ttp_url=ttp_url, ttp_cert=ttp_cert,
        escrow=escrow, tls=(tls_dir / "cert.pem", tls_dir / "key.pem") if (tls_dir / "cert.pem").exists() else None,
        patience=getattr(args, "patience", 15.0), wallet_path=wallet if pay == "ecash" else None)
    return BuyerSettings(cfg, arg("reader") or p.get("signer.reader"), archive, pay)


def cmd_buy(args: argparse.Namespace) -> int:
    from ..commerce.app import Purchase, buy
    from ..support import prefs
    from ..tinguin.api import Script
    p = prefs.load()
    shop_url, words = _shop_and_items(args, p)
    if not words and not args.service:
        raise UsageError("which items? name at least one SKU (the shop's GET /catalogue lists them)")
    items = _items(words)
    if args.image is not None and not args.image.exists():
        raise UsageError(f"no card image at {args.image}; create one with 'semper card new --image {args.image}'")
    form = _form(args.form)
    pay = _check_module(args.pay, "--pay") or _check_module(p.get("payment.default_module"),
                                                             "prefs payment.default_module")
    if args.anonymous:
        if pay not in (None, "ecash"):
            raise UsageError(f"an anonymous deal is paid with e-cash only, not {pay} (drop --pay or --anonymous)")
        pay = "ecash"
    needs = service_needs(shop_url, args.service, _ca_root(args, p).read_text()) if args.service else None
    settings = buyer_settings(args, workflow=args.workflow, pay=pay, anonymous=args.anonymous, archive=args.archive,
                              shop_url=shop_url, service=needs)
    script = None
    interactive = sys.stdin.isatty() and sys.stderr.isatty()          # the TINGUIN draws on the terminal
    if not interactive:
        if args.script is None:
            raise UsageError("no terminal for the TINGUIN: run semper buy in a terminal, or pass --script PIN_FILE "
                             "to let a scripted user answer its screens (it says so in the evidence)")
        script = Script(payment=pay, pin=args.script.read_text().strip())
    archive = settings.archive
    had_archive = archive.exists()
    opened = contextlib.ExitStack()

    def card() -> object:
        """The card the TINGUIN's worker thread uses: a reader through pcscd, or an image in process."""
        from semper.hardware import cards
        from semper.hardware.iso7816 import AID
        return opened.enter_context(cards.connection(AID.PURSE, settings.reader, args.image))

    say = _Say()
    purchase = Purchase(args.workflow, items, form, pay, args.anonymous, args.service)
    if args.service:
        certifiers = args.certifiers or _file(_pref_path(p, "trust.certifiers"), "prefs trust.certifiers")
        if certifiers is None:
            raise UsageError("a downloaded service runs only when a certifier you trust certified it: pass "
                             "--certifiers PEM (or: semper prefs set trust.certifiers FILE)")
        settings.config.certifiers = certifiers
    try:
        with opened:
            result = buy(settings.config, card, purchase, interactive=interactive, script=script, say=say)
    finally:
        if not had_archive and archive.exists() and _empty_archive(archive):
            for leftover in (archive, Path(f"{archive}-wal"), Path(f"{archive}-shm")):
                leftover.unlink(missing_ok=True)          # a failed buy leaves no empty archive behind
    summary = result.summary
    if say.declined and not result.ok and pay:
        summary = (f"the shop's offer does not accept {pay} (--pay); the scripted user declined it, so nothing was "
                   f"ordered or paid ({say.declined})")
    written = None
    if args.out is not None:
        if result.content is not None and result.ok:
            args.out.write_bytes(result.content)
            written = str(args.out)
        else:
            note(f"nothing written to {args.out}: the deal delivered no information")
    out = {"deal": result.deal_id, "status": result.status.value, "summary": summary, "content_file": written,
           "evidence": [{"kind": e.kind, "entry": e.archive_index, "sha256": e.digest} for e in result.evidence]}
    emit(args, out, lambda: _text(out, archive))
    return 0 if result.ok else 1


def _text(out: dict[str, Any], archive: Path) -> str:
    lines = [f"deal {out['deal'] or '-'}: {out['status']}", f"  {out['summary']}"]
    if out["content_file"]:
        lines.append(f"  the information is in {out['content_file']}")
    if out["evidence"]:
        lines.append(f"  evidence: {len(out['evidence'])} entries in {archive} ("
                     + ", ".join(e["kind"] for e in out["evidence"]) + ")")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("buy", help="buy from a shop (offer, TINGUIN, order, payment, delivery)")
    p.add_argument("target", nargs="*", metavar="[SHOP_URL] ITEM",
                   help="the shop, https://host:port (default: prefs servers.shop), then SKU or SKU:QUANTITY (see "
                        "the shop's GET /catalogue)")
    p.add_argument("-w", "--workflow", default="mail-order", choices=("mail-order", "information", "registration",
                                                                      "contract"))
    p.add_argument("-s", "--service", type=_service_name, metavar="NAME",
                   help="download the shop's commerce service NAME (its GET /services lists them), check its "
                        "certificate, show it in the TINGUIN and run it (items: as the service says, or these)")
    p.add_argument("--certifiers", type=existing_file, metavar="PEM",
                   help="the service certifiers you trust (default: prefs trust.certifiers)")
    p.add_argument("--pay", help="the payment module you would prefer (you choose in the TINGUIN; default: prefs "
                                 "payment.default_module)")
    p.add_argument("--anonymous", action="store_true", help="an anonymous deal: nothing signed, e-cash only "
                                                            "(semper wallet withdraw first)")
    p.add_argument("-f", "--form", action="append", metavar="KEY=VALUE", help="order form values (repeat)")
    p.add_argument("-r", "--reader", help="the PC/SC reader of your card (default: prefs signer.reader, else search)")
    p.add_argument("-i", "--image", type=card_image, help="a simulated card image in this process instead of a reader")
    p.add_argument("--ca-root", type=existing_file, help="the CA root you trust (default: prefs trust.ca_root)")
    p.add_argument("--purse-root", type=existing_file, help="the card purse scheme root, to check payments in fair "
                                                            "exchanges (default: prefs trust.purse_root)")
    p.add_argument("--bank", help="the bank's URL (default: prefs servers.bank)")
    p.add_argument("--bank-tls-root", type=existing_file, help="the bank's TLS root, PEM (default: prefs "
                                                               "trust.bank_tls_root)")
    p.add_argument("-a", "--account", help="your account at the bank: cheques, account payments, e-cash (default: "
                                           "prefs payment.account)")
    p.add_argument("--ttp", help="the third party's URL (fair exchanges; default: prefs servers.ttp)")
    p.add_argument("--tls-dir", type=Path, help="your mailbox's TLS key and chain for fair exchanges "
                                                "(default: $SEMPER_HOME/client-tls; semper ca tls-cert makes one)")
    p.add_argument("--wallet", type=Path, help="your e-cash wallet (default: $SEMPER_HOME/wallet.json)")
    p.add_argument("--archive", type=Path, help="your evidence archive (default: $SEMPER_HOME/evidence.sqlite3)")
    p.add_argument("-o", "--out", type=new_file, help="write the information you bought to this file")
    p.add_argument("--patience", type=positive_float, default=15.0,
                   help="seconds to wait for a delivery or an exchange")
    p.add_argument("--script", type=existing_file, metavar="PIN_FILE",
                   help="no person at a terminal: a scripted user answers the TINGUIN, typing this PIN")
    json_arg(p)
    p.set_defaults(fn=cmd_buy, more_positionals="target")
