"""``semper agent``: the buyer's local agent, where a shop's web page hands over a purchase (docs/web.md).

``semper agent`` listens on loopback (default port 8470) and runs each handed-off deal with the TINGUIN in
this terminal, exactly as ``semper buy`` does; without a terminal ``--script PIN_FILE`` lets the scripted
user answer (it says so in the evidence). ``semper agent install`` registers the ``web+semper:`` link
handler with the desktop; ``semper agent open LINK`` (what the desktop runs for such a link) hands the
link to the running agent and opens the delivery in the browser when the deal is done.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import CommandFailed, UsageError, emit, existing_file, json_arg, port

RUNTIME = "agent.json"


def runtime_file() -> Path:
    from ..support.paths import semper_home
    return semper_home() / "agent" / RUNTIME


def buyer_config(args: argparse.Namespace) -> Any:
    """The buyer's client configuration, read as ``semper buy`` reads it (arguments, else the preferences);
    the shop and the workflow come with each hand-off, so what a workflow needs is checked per deal."""
    from .buy import buyer_settings
    return buyer_settings(args, workflow=None, pay=getattr(args, "pay", None), archive=args.archive).config


def ask_in_terminal(origin: str) -> bool:
    """The first-contact question, in the agent's own terminal (a page cannot answer it)."""
    try:
        answer = input(f"\nsemper agent: the page at {origin} wants to hand you purchases. Allow this shop? "
                       "(you still confirm every purchase in the TINGUIN) [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_agent(args: argparse.Namespace) -> int:
    from ..agent.service import Agent
    from ..support.secret_files import write_secret
    from ..tinguin.api import Script, run_deal
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and args.script is None:
        raise UsageError("no terminal for the TINGUIN: run semper agent in a terminal, or pass --script PIN_FILE to "
                         "let a scripted user answer its screens (it says so in the evidence)")
    script = None if interactive else Script(payment=args.pay, pin=args.script.read_text().strip())
    cfg = buyer_config(args)

    def card() -> object:
        from semper.hardware.cards import open_connection
        from semper.hardware.iso7816 import AID

        from ..support import prefs
        return open_connection(AID.PURSE, args.reader or prefs.load().get("signer.reader"), args.image)

    held: list[str] = []
    busy = threading.Event()

    def say(line: str) -> None:
        """The agent's own lines; held while the TINGUIN owns the terminal, printed after it closes."""
        if interactive and busy.is_set():
            held.append(line)
        else:
            print(f"semper agent: {line}", flush=True)

    def runner(workflow: Any) -> Any:
        busy.set()
        try:
            return run_deal(workflow, interactive=interactive, script=script or Script(),
                            say=lambda line: print(line, file=sys.stderr, flush=True))
        finally:
            busy.clear()
            for line in held:
                print(f"semper agent: {line}", flush=True)
            held.clear()
    try:
        agent = Agent(cfg, card, runner, allowed=tuple(args.allow or ()), confirm=ask_in_terminal if interactive
                      else None, say=say)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        url = agent.start(port=args.port)
    except OSError as e:
        raise CommandFailed(f"cannot listen on 127.0.0.1:{args.port} ({e}); is another agent running? "
                         "(--port N)") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    path = runtime_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(path, json.dumps({"url": url, "secret": agent.secret}))
    print(f"semper agent listening on {url}", flush=True)
    print(f"semper agent: shops allowed: {', '.join(sorted(agent.allowed)) or 'none yet (asked on first contact)'}",
          flush=True)
    try:
        agent.serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
        path.unlink(missing_ok=True)
    print("semper agent stopped", flush=True)
    return 0


def cmd_agent_install(args: argparse.Namespace) -> int:
    from ..agent.desktop import install
    done = install(args.dir, register=not args.no_register)
    emit(args, {"done": done}, "\n".join(done))
    return 0


def cmd_agent_open(args: argparse.Namespace) -> int:
    import httpx

    from ..agent.handoff import from_link
    request = from_link(args.link)
    try:
        running = json.loads(runtime_file().read_text())
    except (OSError, ValueError):
        raise CommandFailed("no SEMPER agent is running: start `semper agent` in a terminal, then open the link "
                         "again") from None
    headers = {"Authorization": f"Bearer {running['secret']}"}
    body = {"shop": request.shop, "offer": request.offer, "form": dict(request.form)}
    try:
        with httpx.Client(base_url=running["url"], timeout=10, trust_env=False) as client:
            r = client.post("/v1/purchases", json=body, headers=headers)
            if r.status_code != 202:
                print(f"semper: the agent refused: {r.json().get('message', r.status_code)}", file=sys.stderr)
                return 1
            job = r.json()["job"]
            deadline = time.monotonic() + args.wait
            while True:
                status = client.get(f"/v1/purchases/{job}", headers=headers).json()
                if status["status"] in ("done", "refused") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    except httpx.HTTPError as e:
        raise CommandFailed(f"the SEMPER agent at {running['url']} did not answer ({e}); is it still "
                            "running?") from None
    emit(args, status, lambda: f"deal {status.get('deal') or '-'}: {status.get('outcome') or status['status']}"
         + (f"; delivery: {status['delivery']}" if status.get("delivery") else ""))
    if status.get("delivery") and not args.no_browser:
        import webbrowser
        webbrowser.open(status["delivery"])
    return 0 if status.get("outcome") == "satisfied" else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("agent", help="the buyer's local agent: shop pages hand it purchases, the TINGUIN decides")
    p.add_argument("--port", type=port, default=8470, help="loopback port (default 8470; 0 = any free port)")
    p.add_argument("--allow", action="append", metavar="ORIGIN",
                   help="a shop's https origin whose pages may hand you purchases without asking first (repeat)")
    p.add_argument("--pay", help="the payment module the scripted user chooses (--script only)")
    p.add_argument("--reader", help="the PC/SC reader of your card (default: prefs signer.reader, else search)")
    p.add_argument("--image", type=Path, help="a simulated card image in this process instead of a reader")
    p.add_argument("--ca-root", type=existing_file, help="the CA root you trust (default: prefs trust.ca_root)")
    p.add_argument("--purse-root", type=existing_file,
                   help="the card purse scheme root (to check payments in exchanges)")
    p.add_argument("--bank", help="the bank's URL (default: prefs servers.bank)")
    p.add_argument("--bank-tls-root", type=existing_file, help="the bank's TLS root (PEM)")
    p.add_argument("--account", help="your account at the bank (cheques, account payments)")
    p.add_argument("--ttp", help="the third party's URL (fair exchanges; default: prefs servers.ttp)")
    p.add_argument("--tls-dir", type=Path, help="your mailbox's TLS key and chain for fair exchanges")
    p.add_argument("--archive", type=Path, help="your evidence archive (default: $SEMPER_HOME/evidence.sqlite3)")
    p.add_argument("--patience", type=float, default=15.0, help="seconds to wait for a delivery or an exchange")
    p.add_argument("--script", type=existing_file, metavar="PIN_FILE",
                   help="no person at a terminal: a scripted user answers the TINGUIN, typing this PIN")
    p.set_defaults(fn=cmd_agent)
    sp = p.add_subparsers(dest="agent_command", required=False)
    i = sp.add_parser("install", help="register `semper agent open` as the desktop's web+semper: link handler")
    i.add_argument("--dir", type=Path, help="the applications folder (default: $XDG_DATA_HOME/applications)")
    i.add_argument("--no-register", action="store_true", help="only write the desktop file")
    json_arg(i)
    i.set_defaults(fn=cmd_agent_install)
    o = sp.add_parser("open", help="hand a web+semper: link to the running agent (what the desktop runs)")
    o.add_argument("link", help="web+semper:purchase?shop=...&offer=...&form.NAME=VALUE")
    o.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the deal (default 600)")
    o.add_argument("--no-browser", action="store_true", help="print the outcome only; do not open the delivery")
    json_arg(o)
    o.set_defaults(fn=cmd_agent_open)
