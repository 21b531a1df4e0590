"""Cards and pcscd coming and going: insertion/removal events, a pcscd restart, SIGTERM, tears."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from semper.bench.common import card_pair
from semper.bench.tearing import run_tear_test
from semper.hardware import readers
from semper.hardware.pcscd import Pcscd, free_port_pair, reader_names
from semper.hardware.purse import PurseSession
from semper.hardware.transport import PcscConnection

pytestmark = pytest.mark.pcsc


def _serve(image, port):
    return subprocess.Popen([sys.executable, "-m", "semper.card_applet_sim", str(image), "--port", str(port),
                             "--no-sync"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_events_and_card_survive_a_pcscd_restart():
    reader = reader_names()[0]
    port = free_port_pair()
    with card_pair() as pair:
        daemon = Pcscd(port=port).start()
        server = _serve(pair.buyer, port)
        events: list[readers.ReaderEvent] = []

        def watch() -> None:
            """Events for at most 12 s; done once the card is back after pcscd was lost, the last event
            the test looks for (the rest of the 12 s would only be waited out)."""
            seen = readers.monitor(12.0, poll_ms=100)
            try:
                for event in seen:
                    events.append(event)
                    if (event.kind, event.reader) == ("card-inserted", reader) and \
                            any(e.kind == "service-lost" for e in events):
                        return
            finally:
                seen.close()
        watcher = threading.Thread(target=watch)
        try:
            assert readers.wait_for_card(reader, 10)
            watcher.start()
            time.sleep(1.0)
            server.terminate()                                   # card pulled
            assert server.wait(5) == 0                           # SIGTERM: clean exit
            assert readers.wait_for_card(reader, 10, present=False)
            server = _serve(pair.buyer, port)                    # card back
            assert readers.wait_for_card(reader, 10)
            daemon.stop()                                        # pcscd goes away ...
            time.sleep(0.5)
            daemon = Pcscd(port=port).start()                    # ... and comes back on the same ports
            assert readers.wait_for_card(reader, 15), "the card server did not reconnect to the new pcscd"
            with PcscConnection(reader) as conn:                 # and the card still works
                assert PurseSession(conn).info().balance == 0
            watcher.join(20)
        finally:
            server.terminate()
            server.wait(5)
            daemon.stop()
    kinds = [(e.kind, e.reader) for e in events]
    assert ("card-removed", reader) in kinds
    assert kinds.count(("card-inserted", reader)) >= 2, kinds
    assert ("service-lost", "") in kinds
    lost = kinds.index(("service-lost", ""))
    assert ("card-inserted", reader) in kinds[lost:], "monitor did not pick the card up again after the restart"


def test_card_serve_rejects_a_missing_or_locked_image(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "semper.card_applet_sim", str(tmp_path / "nope.card")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "semper card new" in missing.stderr
    with card_pair() as pair:
        first = _serve(pair.buyer, free_port_pair())
        try:
            time.sleep(1.0)
            second = subprocess.run([sys.executable, "-m", "semper.card_applet_sim", str(pair.buyer)],
                                    capture_output=True, text=True, timeout=30)
            assert second.returncode == 2 and "in use" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(5) == 0


def test_tearing_loses_nothing():
    """SIGKILL the served card at random moments during loads and purchases (small run; the
    command 'semper card tear-test --runs N' does the long one)."""
    report = run_tear_test(runs=60, seed=7, progress=False, min_operations=300)
    assert report["violations"] == 0, report["violation_details"]
    assert 60 <= report["kills"] <= 180
    assert report["operations"] >= 300 or report["kills"] == 180              # hundreds of operations
    assert report["loads_committed"] + report["debits_committed"] > 0
    assert report["in_flight_committed"] + report["in_flight_rolled_back"] > 0  # kills did land mid-operation


def test_bench_apdu_reports_every_figure():
    """Timings are not asserted (they belong to 'semper bench'); the report must be complete and sane."""
    from semper.bench.apdu import bench_apdu
    report = bench_apdu(count=30, purchases=3, progress=False)
    for key in ("in_process", "pcscd", "purchase_pcscd", "piv_sign_9a_pcscd", "piv_verify_and_sign_9c_pcscd",
                "raw_cryptography_sign"):
        figures = report[key]
        assert figures["n"] >= 3 and 0 < figures["min_us"] <= figures["median_us"] <= figures["p95_us"]
    assert report["pcscd"]["median_us"] > report["in_process"]["median_us"]     # pcscd adds a real hop
    assert isinstance(report["meets_target"], bool) and report["piv_sign_over_raw"] > 0
