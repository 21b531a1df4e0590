"""``semper demo``: the simulated card working through the real PC/SC stack.

It issues a buyer card and a seller PSAM from a throwaway purse scheme, puts both into pcscd's
virtual readers, and then does what a user would: look at the card, load the purse (with the PIN),
pay a seller, and let the seller close its batch. Later issues grow this into the full purchase.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from hardware.pcscd import VirtualCards
from hardware.psam import PsamSession
from hardware.purse import PurseSession
from hardware.readers import list_readers
from hardware.transport import PcscConnection

from .payment import card_purse
from .support.money import format_amount
from .support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from .support.scheme import Scheme

DEMO_PIN = b"1234"


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def run_demo(keep: bool = False) -> int:
    folder = Path(tempfile.mkdtemp(prefix="semper-demo-"))
    try:
        _step(1, f"issuing a buyer card and a seller PSAM in {folder}")
        scheme = Scheme.load_or_create(folder / "scheme")
        buyer, psam_image = folder / "buyer.card", folder / "psam.card"
        number = personalise_purse_card(buyer, scheme, CardProfile(DEMO_PIN, b"12345678")).card_number
        psam_id = personalise_psam(psam_image, scheme)
        print(f"    card {number.hex().upper()} (PIN {DEMO_PIN.decode()}), PSAM {psam_id.hex().upper()}")

        _step(2, "starting pcscd (if needed) and serving both cards to its virtual readers")
        with VirtualCards([buyer, psam_image]) as vc:
            for info in list_readers():
                print(f"    {info.name}: {'card ATR ' + info.atr.hex().upper() if info.card_present else 'empty'}")
            if shutil.which("opensc-tool"):
                _step(3, "an outside client (OpenSC's opensc-tool) sends APDUs to the card")
                out = subprocess.run(["opensc-tool", "-c", "default", "-r", vc.readers[0], "-s", "00 A4 04 00 08 F0 53 45 4D 50 45 52 01 00",
                                      "-s", "80 50 00 00 00"], capture_output=True, text=True, timeout=30)
                for line in (out.stdout + out.stderr).strip().splitlines():
                    print(f"    {line}")
            with PcscConnection(vc.readers[0]) as c1, PcscConnection(vc.readers[1]) as c2:
                purse, psam = PurseSession(c1), PsamSession(c2)
                info = purse.info()
                _step(4, "the card, read through pcscd")
                print(f"    card {info.card_id}: balance {format_amount(info.balance, info.currency)}, "
                      f"max {format_amount(info.max_balance, info.currency)}, PIN tries {info.pin_tries}")
                _step(5, "loading 50.00 from the issuer (PIN verified on the card)")
                loaded = card_purse.load(purse, scheme, 5000, DEMO_PIN).confirmation
                print(f"    load #{loaded.load_counter}: balance {format_amount(loaded.balance, loaded.currency)}")
                _step(6, "paying 12.50 to the seller's PSAM (no PIN; the card checks the PSAM's certificate)")
                paid = card_purse.purchase(purse, psam, 1250)
                info = purse.info()
                print(f"    debit #{paid.proof.debit_counter} proof signed by the card, in batch "
                      f"{paid.batch_number}; balance {format_amount(info.balance, info.currency)}")
                _step(7, "the card's own log")
                for e in purse.log():
                    print(f"    {e.kind:5} #{e.counter} {format_amount(e.amount, info.currency):>10}   balance after "
                          f"{format_amount(e.balance_after, info.currency)}")
                _step(8, "the seller closes its batch for clearing")
                header, _ = psam.close_batch()
                entries = psam.batch_entries(header.batch_number)
                print(f"    batch {header.batch_number}: {header.count} debit(s), "
                      f"{format_amount(header.total, header.currency)}, {len(entries)} signed proof(s)")
        print("\ndemo finished: the card's balance, counters and log are on the card image, signed by the card.")
        return 0
    finally:
        if keep:
            print(f"(kept {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)
