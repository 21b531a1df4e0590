"""A PSAM as a device of its own: one process owns the PSAM's reader, the shop's workers call it.

Why a process: a card in a reader is one session at a time (a card image even refuses a second
opener), and the PSAM's room rule — at most 16 debits open, or it evicts the oldest and a card that
already paid is refused — can only be kept where every debit passes. So with ``semper serve shop
--workers N`` the parent starts one device process per PSAM; it opens the PSAM and serves its
:class:`~semper.client.payment.psam_desk.PsamDesk` on a unix socket (mode 0600, in a folder only the
shop's user can enter): ``admit`` / ``release`` (room), ``begin`` / ``complete`` (the debit; ``begin``
names the card, so the desk's cap of open debits per card, ``psam_desk.CARD_OPEN_CAP``, holds across
the workers as the room does), ``find_proof``, ``info``, ``certificate`` and the batch operations for
clearing. Every worker talks to it through :class:`PsamDeviceClient`, which has the desk's methods, so
the purse module cannot tell the two apart. The device keeps no state that is not on the card but the
room it counts (and whose cards hold it): if it dies, the parent starts it again, and the new desk
counts every request the PSAM holds open as taken until it goes stale (``psam_desk.STALE_AFTER``).

The wire: one JSON object per line each way, ``{"op", "args"}`` -> ``{"ok": value}`` or ``{"error":
class name, "message", "sw"}``; bytes in base64. Errors come back as the classes they were raised as
(the hardware layer's and the payment layer's), so the purse module's handling stays the same.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from semper.hardware import errors as hw
from semper.hardware.psam import BatchEntry, PsamInfo
from semper.hardware.purse_records import BatchHeader, Signed

from ..payment import errors as pay
from ..payment.psam_desk import CardBusy, PsamDesk, TerminalBusy

CONNECT_WAIT = 15.0          # seconds a worker waits for the device to (re)appear before the step fails
CALL_TIMEOUT = 30.0
MAX_LINE = 4 * 1024 * 1024   # a closed batch's entries (the clearing) is the largest answer
_ERRORS: dict[str, type[Exception]] = {
    c.__name__: c for c in (hw.HardwareError, hw.ReaderError, hw.CardRemovedError, hw.TransportError, hw.CardError,
                            hw.NotAuthenticError, hw.ReplayError, hw.NotFoundError, hw.ConditionsError,
                            hw.InvalidInputError, hw.InsufficientFundsError, hw.MaxBalanceError, TerminalBusy,
                            CardBusy, pay.PaymentError, pay.InstrumentError)}


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _u(text: str) -> bytes:
    return base64.b64decode(text)


def _signed(s: Signed) -> list[str]:
    return [_b(s.record), _b(s.signature)]


def _unsigned(v: list[str]) -> Signed:
    return Signed(_u(v[0]), _u(v[1]))


# ---- the device side ------------------------------------------------------------------------------------
def _dispatch(desk: PsamDesk, op: str, a: dict[str, Any]) -> Any:
    if op == "admit":
        desk.admit(a["payment_id"])
        return None
    if op == "release":
        desk.release(a["payment_id"])
        return None
    if op == "unadmit":
        desk.unadmit(a["payment_id"])
        return None
    if op == "held":
        return desk.held()
    if op == "psam_id":
        return desk.psam_id()
    if op == "certificate":
        return _b(desk.certificate())
    if op == "info":
        i = desk.info()
        return {"psam_id": _b(i.psam_id), "currency": i.currency, "sequence": i.sequence,
                "batch_number": i.batch_number, "batch_count": i.batch_count, "batch_total": i.batch_total,
                "pending": i.pending, "lifetime_total": i.lifetime_total}
    if op == "begin":
        return _signed(desk.begin_debit(a["payment_id"], _u(a["card"]), a["counter"], a["amount"], a["currency"]))
    if op == "complete":
        return list(desk.complete_debit(a["payment_id"], _u(a["card_certificate"]), _unsigned(a["proof"])))
    if op == "find_proof":
        found = desk.find_proof(_u(a["record"]))
        return None if found is None else list(found)
    if op == "close_batch":
        return _signed(desk.close_batch()[1])
    if op == "batch_header":
        return _signed(desk.batch_header(a["number"])[1])
    if op == "batch_entries":
        return [[_b(e.card_certificate), *_signed(e.proof)] for e in desk.batch_entries(a["number"])]
    raise ValueError(f"unknown operation {op!r}")


def _serve_connection(desk: PsamDesk, conn: socket.socket) -> None:
    with conn, conn.makefile("rb") as rf, conn.makefile("wb") as wf:
        for line in rf:
            try:
                req = json.loads(line)
                out: dict[str, Any] = {"ok": _dispatch(desk, str(req["op"]), dict(req.get("args") or {}))}
            except (hw.HardwareError, pay.PaymentError) as e:
                out = {"error": type(e).__name__, "message": str(e), "sw": getattr(e, "sw", 0)}
            except Exception as e:          # a malformed request from a worker: its step fails, the device stays
                out = {"error": "PaymentError", "message": f"the PSAM device could not do that: {e}", "sw": 0}
            wf.write(json.dumps(out).encode() + b"\n")
            wf.flush()


def serve(desk: PsamDesk, path: Path, ready: Any = None, stop: threading.Event | None = None) -> None:
    """Serve ``desk`` on a unix socket at ``path`` (mode 0600) until ``stop`` is set."""
    path = Path(path)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.listen(64)
    server.settimeout(0.5)
    if ready is not None:
        ready()
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve_connection, args=(desk, conn), daemon=True).start()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m semper.client.servers.psam_device --dir SHOP --index I --socket PATH``: the shop's I-th
    PSAM (``shop.json``), served until SIGTERM. Prints one line when it listens."""
    from semper.hardware.cards import open_connection
    from semper.hardware.iso7816 import AID
    from semper.hardware.psam import PsamSession

    from ..support.prefork import die_with_parent
    from .shop_home import ShopHome
    ap = argparse.ArgumentParser(prog="python -m semper.client.servers.psam_device")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--socket", type=Path, required=True)
    ap.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid)
    spec = ShopHome(args.dir).psam_specs()[args.index]
    conn = open_connection(AID.PSAM, spec.get("reader"), Path(spec["image"]) if spec.get("image") else None,
                           sync=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        desk = PsamDesk(PsamSession(conn))
        psam_id = desk.psam_id()
        serve(desk, args.socket, lambda: print(f"semper PSAM {psam_id} listening on {args.socket}", flush=True),
              stop)
    finally:
        conn.close()
    return 0


# ---- the workers' side ----------------------------------------------------------------------------------
class PsamDeviceClient:
    """A worker's handle on a PSAM device: the :class:`PsamDesk` methods over the device's socket (one
    connection per thread, made again when the device was restarted)."""

    def __init__(self, path: Path, *, connect_wait: float = CONNECT_WAIT) -> None:
        self.path = Path(path)
        self.connect_wait = connect_wait
        self._local = threading.local()
        self._id: str | None = None
        self._cert: bytes | None = None

    def _connection(self) -> tuple[socket.socket, Any]:
        held = getattr(self._local, "conn", None)
        if held is not None:
            return held
        deadline = time.monotonic() + self.connect_wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CALL_TIMEOUT)
            try:
                sock.connect(str(self.path))
                break
            except OSError as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise hw.ReaderError(f"the PSAM's device process does not answer at {self.path} ({e})") from None
                time.sleep(0.05)
        held = (sock, sock.makefile("rwb"))
        self._local.conn = held
        return held

    def _drop(self) -> None:
        held = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None:
            for c in (held[1], held[0]):
                try:
                    c.close()
                except OSError:
                    pass

    def _call(self, op: str, **args: Any) -> Any:
        for attempt in (1, 2):
            sock, f = self._connection()
            try:
                f.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
                f.flush()
                line = f.readline(MAX_LINE)
                if not line:
                    raise ConnectionError("the device closed the connection")
            except OSError as e:
                self._drop()
                # an idle connection to a device that was restarted since: its first write fails (the
                # device never read it); anything else is a device that died under this call
                if attempt == 1 and isinstance(e, (BrokenPipeError, ConnectionResetError)) and op in _SAFE:
                    continue
                raise hw.ReaderError(f"the PSAM's device process went away during {op} ({e}); nothing after "
                                     "its last answer is certain: try again") from None
            answer = json.loads(line)
            if "error" in answer:
                raise _rebuild(answer)
            return answer["ok"]
        raise AssertionError("unreachable")

    # ---- the desk's methods -------------------------------------------------------------------------
    def admit(self, payment_id: str) -> None:
        self._call("admit", payment_id=payment_id)

    def release(self, payment_id: str) -> None:
        self._call("release", payment_id=payment_id)

    def unadmit(self, payment_id: str) -> None:
        self._call("unadmit", payment_id=payment_id)

    def held(self) -> int:
        return int(self._call("held"))

    def psam_id(self) -> str:
        if self._id is None:
            self._id = str(self._call("psam_id"))
        return self._id

    def certificate(self) -> bytes:
        if self._cert is None:
            self._cert = _u(self._call("certificate"))
        return self._cert

    def info(self) -> PsamInfo:
        i = self._call("info")
        return PsamInfo(_u(i["psam_id"]), i["currency"], i["sequence"], i["batch_number"], i["batch_count"],
                        i["batch_total"], i["pending"], i["lifetime_total"])

    def begin_debit(self, payment_id: str, card_number: bytes, counter: int, amount: int, currency: int) -> Signed:
        return _unsigned(self._call("begin", payment_id=payment_id, card=_b(card_number), counter=counter,
                                    amount=amount, currency=currency))

    def complete_debit(self, payment_id: str | None, card_certificate: bytes, proof: Signed) -> tuple[int, int, int]:
        batch, index, total = self._call("complete", payment_id=payment_id, card_certificate=_b(card_certificate),
                                         proof=_signed(proof))
        return int(batch), int(index), int(total)

    def find_proof(self, proof_record: bytes) -> tuple[int, int] | None:
        found = self._call("find_proof", record=_b(proof_record))
        return None if found is None else (int(found[0]), int(found[1]))

    def close_batch(self) -> tuple[BatchHeader, Signed]:
        s = _unsigned(self._call("close_batch"))
        return BatchHeader.decode(s.record), s

    def batch_header(self, number: int) -> tuple[BatchHeader, Signed]:
        s = _unsigned(self._call("batch_header", number=number))
        return BatchHeader.decode(s.record), s

    def batch_entries(self, number: int) -> list[BatchEntry]:
        return [BatchEntry(_u(c), Signed(_u(r), _u(s))) for c, r, s in self._call("batch_entries", number=number)]


# what may be sent again after a broken connection: it changes nothing, or the desk makes it idempotent
_SAFE = {"admit", "release", "held", "psam_id", "certificate", "info", "begin", "find_proof", "batch_header",
         "batch_entries"}


def _rebuild(answer: dict[str, Any]) -> Exception:
    cls = _ERRORS.get(str(answer.get("error")), pay.PaymentError)
    e = cls.__new__(cls)
    Exception.__init__(e, str(answer.get("message", "")))
    if isinstance(e, hw.CardError):
        e.sw = int(answer.get("sw") or 0)
    return e


if __name__ == "__main__":
    sys.exit(main())
