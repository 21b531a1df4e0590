"""``semper card tear-test``: kill a served card with SIGKILL at random moments, check nothing is lost.

The buyer card runs as a child process (``python -m card_applet_sim``) connected to a small vpcd
stand-in here, so a kill is a real process death in the middle of whatever the card was doing,
including writing its image. Loads and purchases run against it; a timer kills it after a random
delay. After every restart the card must show:

* counters that never went back, and that moved by at most the one operation in flight;
* balance = initial + committed loads - committed debits, where "committed" is read from the
  counters and each counter value maps to the amount sent with it;
* a log whose newest entry agrees with the counters and the balance, with valid signatures;
* money conserved with the seller: a debit that committed on the card but whose answer was lost is
  recovered from the card's log and completed at the PSAM, so PSAM total = card debits.
"""
from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from semper.hardware.errors import SemperError

from .common import card_pair

if TYPE_CHECKING:
    from semper.client.support.scheme import Scheme
    from semper.hardware.purse import PurseInfo, PurseSession

PIN = b"1234"


class _Killed(SemperError):
    """The simulated card process was killed at this point (the tearing bench's own signal)."""


class VpcdServerConnection:
    """The vpcd side of the link: we listen, the card connects, frames go both ways."""

    reader = "tear-test"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5.0)

    def _frame(self, payload: bytes) -> bytes | None:
        try:
            self.sock.sendall(len(payload).to_bytes(2, "big") + payload)
            head = self._read(2)
            return self._read(int.from_bytes(head, "big"))
        except (OSError, _Killed):
            from semper.hardware.errors import CardRemovedError
            raise CardRemovedError("the card process went away") from None

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise _Killed()
            buf += chunk
        return bytes(buf)

    def transmit(self, apdu: bytes) -> bytes:
        return self._frame(apdu) or b""

    @property
    def atr(self) -> bytes:
        return self._frame(b"\x04") or b""

    def power_on(self) -> None:
        self.sock.sendall(b"\x00\x01\x01")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Ledger:
    initial: int = 0
    loads: dict[int, int] = field(default_factory=dict)     # load counter -> amount
    debits: dict[int, int] = field(default_factory=dict)    # debit counter -> amount
    load_ctr: int = 0
    debit_ctr: int = 0
    in_flight: tuple | None = None                          # ("load"|"debit", counter, amount, request)

    def expected_balance(self, load_ctr: int, debit_ctr: int) -> int:
        return (self.initial + sum(a for c, a in self.loads.items() if c <= load_ctr)
                - sum(a for c, a in self.debits.items() if c <= debit_ctr))


def run_tear_test(runs: int = 200, seed: int = 1, progress: bool = True, max_delay_ms: float = 40.0,
                  write_chunk: int = 4, min_operations: int = 0) -> dict[str, object]:
    """Kill the card ``runs`` times; on a slow machine fewer operations fit between kills, so with
    ``min_operations`` it goes on (up to three times ``runs``) until that many were attempted."""
    from semper.hardware import errors
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hardware.purse_records import Signed
    from semper.hardware.simulator import open_card
    if runs < 1:
        raise ValueError("--runs must be at least 1")
    rng = random.Random(seed)
    violations: list[str] = []
    counts = {"kills": 0, "loads_committed": 0, "debits_committed": 0, "in_flight_committed": 0,
              "in_flight_rolled_back": 0, "torn_images_recovered": 0, "operations": 0}
    started = time.monotonic()

    with card_pair(sync=True) as pair, open_card(pair.psam) as psam_conn:
        psam = PsamSession(psam_conn)
        scheme = pair.scheme
        ledger = Ledger()
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(10.0)
        port = server.getsockname()[1]
        psam_total_start = psam.info().lifetime_total

        def start_card() -> tuple[subprocess.Popen, VpcdServerConnection]:
            proc = subprocess.Popen([sys.executable, "-m", "semper.card_applet_sim", str(pair.buyer),
                                     "--port", str(port), "--write-chunk", str(write_chunk)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                sock, _ = server.accept()
            except TimeoutError:
                proc.kill()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"the card process did not connect: {err[-400:]}") from None
            conn = VpcdServerConnection(sock)
            conn.power_on()
            return proc, conn

        run = -1
        while True:
            run += 1
            if run >= runs and (counts["operations"] >= min_operations or run >= 3 * runs):
                break
            proc, conn = start_card()
            try:
                purse = PurseSession(conn)
                info = purse.info()
                # ---- check the state the last kill left ----
                problems = _check(purse, info, ledger, scheme)
                violations += [f"run {run}: {p}" for p in problems]
                if ledger.in_flight is not None:
                    kind, ctr, amount, request = ledger.in_flight
                    committed = (info.load_counter if kind == "load" else info.debit_counter) == ctr
                    counts["in_flight_committed" if committed else "in_flight_rolled_back"] += 1
                    if kind == "debit" and committed:
                        found = purse.find_debit_proof(request)
                        if found is None:
                            violations.append(f"run {run}: committed debit #{ctr} has no proof in the card log")
                        else:
                            psam.complete_debit(purse.certificate(), found[1])
                    ledger.in_flight = None
                ledger.load_ctr, ledger.debit_ctr = info.load_counter, info.debit_counter
                if run == 0:
                    ledger.initial = info.balance
                # The card derives a PIN's scrypt verifier (about 25 ms) before it writes anything, and
                # remembers the PIN that matched for the rest of its process: verifying once here keeps
                # the kills below for the moments when the card writes, not for that computation.
                purse.verify_pin(PIN)
                # ---- operate until killed ----
                timer = threading.Timer(rng.uniform(0, max_delay_ms) / 1000, proc.kill)
                timer.start()
                try:
                    while True:
                        counts["operations"] += 1
                        balance = purse.info().balance
                        if balance < 2_000 or rng.random() < 0.3:
                            amount = rng.randint(1, 5_000)
                            purse.verify_pin(PIN)
                            request, _ = purse.initialize_load(amount, info.currency)
                            ledger.loads[request.load_counter] = amount
                            command = request.command()
                            ledger.in_flight = ("load", request.load_counter, amount, request)
                            purse.load(Signed(command, scheme.sign_load(command)))
                            ledger.load_ctr = request.load_counter
                        else:
                            amount = rng.randint(1, min(balance, 3_000))
                            nxt = purse.info().debit_counter + 1
                            request, signed = psam.begin_debit(info.card_number, nxt, amount, info.currency)
                            ledger.debits[nxt] = amount
                            ledger.in_flight = ("debit", nxt, amount, request)
                            _proof, signed_proof = purse.debit(psam.certificate(), signed)
                            ledger.debit_ctr = nxt
                            psam.complete_debit(purse.certificate(), signed_proof)
                        ledger.in_flight = None
                except errors.HardwareError:
                    pass
                finally:
                    timer.cancel()
                    if proc.poll() is None:          # ended by something other than the kill: no card left behind
                        proc.kill()
                    proc.wait(10)
                    conn.close()
                    if proc.stderr:
                        # the card reports on its start when it dropped a write that a kill interrupted
                        if b"torn" in proc.stderr.read():
                            counts["torn_images_recovered"] += 1
                        proc.stderr.close()
            except BaseException:                    # an error of the test itself: no card process left behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                conn.close()
                raise
            counts["kills"] += 1
            if progress and (run + 1) % max(1, runs // 10) == 0:
                print(f"tear-test: {run + 1}/{runs} kills, {len(violations)} violations", file=sys.stderr, flush=True)

        # final check, and conservation with the PSAM
        proc, conn = start_card()
        purse = PurseSession(conn)
        info = purse.info()
        violations += [f"final: {p}" for p in _check(purse, info, ledger, scheme)]
        if ledger.in_flight is not None:
            kind, ctr, _amount, request = ledger.in_flight
            if kind == "debit" and info.debit_counter == ctr:
                found = purse.find_debit_proof(request)
                if found is not None:
                    psam.complete_debit(purse.certificate(), found[1])
        card_debits = sum(a for c, a in ledger.debits.items() if c <= info.debit_counter)
        psam_gain = psam.info().lifetime_total - psam_total_start
        if card_debits != psam_gain:
            violations.append(f"money not conserved: card paid {card_debits}, PSAM received {psam_gain}")
        proc.terminate()
        proc.wait(10)
        conn.close()
        server.close()

    counts["loads_committed"], counts["debits_committed"] = info.load_counter, info.debit_counter
    return {"runs": runs, "seed": seed, "write_chunk": write_chunk, **counts, "final_balance": info.balance,
            "final_load_counter": info.load_counter, "final_debit_counter": info.debit_counter,
            "seconds": round(time.monotonic() - started, 1), "violations": len(violations),
            "violation_details": violations[:20]}


def _check(purse: PurseSession, info: PurseInfo, ledger: Ledger, scheme: Scheme) -> list[str]:
    from semper.hardware.purse_records import DebitRecord
    problems = []
    if info.load_counter < ledger.load_ctr or info.debit_counter < ledger.debit_ctr:
        problems.append(f"counter went back: load {ledger.load_ctr}->{info.load_counter}, "
                        f"debit {ledger.debit_ctr}->{info.debit_counter}")
    moved = (info.load_counter - ledger.load_ctr) + (info.debit_counter - ledger.debit_ctr)
    if ledger.in_flight is None and moved != 0 and ledger.load_ctr + ledger.debit_ctr > 0:
        problems.append(f"counters moved by {moved} with nothing in flight")
    if moved > 1:
        problems.append(f"counters moved by {moved}, more than the one operation in flight")
    if ledger.in_flight is not None and moved == 1:
        kind, ctr, _a, _r = ledger.in_flight
        actual = info.load_counter if kind == "load" else info.debit_counter
        if actual != ctr:
            problems.append(f"the {kind} counter moved to {actual}, but the operation in flight had #{ctr}")
    expected = ledger.expected_balance(info.load_counter, info.debit_counter)
    if ledger.load_ctr + ledger.debit_ctr + moved > 0 and info.balance != expected:
        problems.append(f"balance {info.balance} != expected {expected}")
    log = purse.log()
    if log:
        newest = log[0]
        if newest.balance_after != info.balance:
            problems.append(f"log's newest balance {newest.balance_after} != card balance {info.balance}")
        want = info.load_counter if newest.kind == "load" else info.debit_counter
        if newest.counter != want:
            problems.append(f"log's newest {newest.kind} is #{newest.counter}, counter says #{want}")
        cert = purse.certificate()
        for e in log[:3]:
            try:
                scheme.verify_card_signature(cert, e.signed.record, e.signed.signature)
            except Exception:
                problems.append(f"log entry {e.kind} #{e.counter} has a bad signature")
            if e.kind == "debit":
                DebitRecord.decode(e.signed.record, b"DPF1")
    return problems
