"""The e-cash wallet sealed to the buyer card's PIV key 9D (ECIES): opens only with that card and its PIN.

Cards are simulated in process (two personalised buyer cards from the same scheme); one test runs
the same through pcscd + vpcd, and one routes the PIN through the TINGUIN (scripted user).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SCHEME_PIN
from cryptography.hazmat.primitives.asymmetric import ec

from semper.client.payment.card_wallet import (
    SCHEME,
    CardWalletKey,
    WrongCardError,
    open_card_wallet,
)
from semper.client.payment.errors import PaymentError, ProtocolError
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ecash import EcashModule
from semper.client.payment.wallet import Coin, Wallet
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors as hw
from semper.hardware.piv import PivSession
from semper.hardware.simulator import open_card

PIN, PUK = b"2468", b"12345678"
EUR = 978
COINS = [Coin("k1", "serial-aaaa", "c2lnLTE=", 100, EUR), Coin("k2", "serial-bbbb", "c2lnLTI=", 5, EUR)]


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("walletcards")
    out = {}
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        for name in ("alice", "mallory"):
            personalise_purse_card(folder / f"{name}.card", scheme, CardProfile(PIN, PUK), sync=False)
            out[name] = folder / f"{name}.card"
    return out


@pytest.fixture
def card(cards: dict[str, Path], tmp_path: Path) -> Iterator[Callable[[str], PivSession]]:
    """``card(name)``: a PIV session on this test's copy of that card.

    Each call is a new card session (the image is closed and opened again, like pulling the card
    out and putting it back), so the PIN state starts over; sessions handed out before are closed.
    """
    opened: dict[str, Any] = {}

    def make(name: str) -> PivSession:
        copy = tmp_path / f"{name}.card"
        if name in opened:
            opened.pop(name).close()
        else:
            shutil.copyfile(cards[name], copy)
        opened[name] = open_card(copy, sync=False)
        return PivSession(opened[name])

    yield make
    for c in opened.values():
        c.close()


class Pins:
    """A PIN entry that counts its calls and hands the given PIN straight to the card session."""

    def __init__(self, pin: bytes = PIN) -> None:
        self.pin = pin
        self.asked: list[str] = []

    def __call__(self, purpose: str, session: Any) -> None:
        self.asked.append(purpose)
        session.verify_pin(self.pin)


def _filled(path: Path, key: CardWalletKey) -> Wallet:
    w = Wallet(path, key)
    w.add(list(COINS))
    return w


def test_sealed_to_the_card_reopens_with_that_card_and_one_pin(card: Callable[[str], PivSession],
                                                                tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    sealing = Pins()
    _filled(path, CardWalletKey(card("alice"), sealing))
    assert sealing.asked == []                                    # sealing uses the public key only
    sealed = json.loads(path.read_text())
    assert sealed["scheme"] == SCHEME and len(sealed) == 6
    pins = Pins()
    again = Wallet(path, CardWalletKey(card("alice"), pins))      # a new card session: the PIN is needed
    assert again.coins == COINS and again.balance(EUR) == 105
    assert len(pins.asked) == 1 and "wallet" in pins.asked[0]
    again.take(5, EUR, "p1")                                      # saving again asks nothing
    assert len(pins.asked) == 1
    assert Wallet(path, CardWalletKey(card("alice"), Pins())).in_flight == {"p1": [COINS[1]]}


def test_every_save_uses_a_fresh_ephemeral_key(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    w = _filled(path, CardWalletKey(card("alice"), Pins()))
    first = json.loads(path.read_text())
    w.save()
    second = json.loads(path.read_text())
    assert first["ephemeral"] != second["ephemeral"] and first["wrapped"] != second["wrapped"]
    assert first["recipient"] == second["recipient"]


def test_another_card_is_refused_before_any_pin(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    _filled(path, CardWalletKey(card("alice"), Pins()))
    pins = Pins()
    with pytest.raises(WrongCardError, match="sealed to another card"):
        Wallet(path, CardWalletKey(card("mallory"), pins))
    assert pins.asked == []
    # naming mallory's key in the file does not help: mallory's card computes another shared secret
    sealed = json.loads(path.read_text())
    mallory = CardWalletKey(card("mallory"), Pins())
    sealed["recipient"] = mallory.recipient
    path.write_text(json.dumps(sealed))
    with pytest.raises(ProtocolError, match="altered or is for another key"):
        Wallet(path, mallory)


def test_the_file_alone_is_useless(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    key = CardWalletKey(card("alice"), Pins())
    _filled(path, key)
    raw = path.read_bytes()
    assert b"serial" not in raw and b"c2lnLTE" not in raw                 # nothing of the coins in clear

    class Impostor:
        """Has the card's public certificate (public knowledge) but not its private key."""

        def __init__(self, real: PivSession) -> None:
            self.real = real
            self.fake = ec.generate_private_key(ec.SECP256R1())

        def certificate(self, slot: Any) -> bytes:
            return self.real.certificate(slot)

        def key_agreement(self, point: bytes, slot: Any = None) -> bytes:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            return self.fake.exchange(ec.ECDH(), peer)

    with pytest.raises(ProtocolError, match="altered or is for another key"):
        Wallet(path, CardWalletKey(Impostor(card("alice")), None))
    # and a flipped byte in the ciphertext is noticed with the right card
    sealed = json.loads(raw)
    ct = bytearray(sealed["ciphertext"].encode())
    ct[10] = ord("A") if ct[10] != ord("A") else ord("B")
    sealed["ciphertext"] = ct.decode()
    path.write_text(json.dumps(sealed))
    with pytest.raises(ProtocolError):
        Wallet(path, CardWalletKey(card("alice"), Pins()))


def test_a_wrong_pin_is_the_cards_wrong_pin_error(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    _filled(path, CardWalletKey(card("alice"), Pins()))
    session = card("alice")
    with pytest.raises(hw.WrongPinError) as e:
        Wallet(path, CardWalletKey(session, Pins(b"9999")))
    assert e.value.tries_left == 2
    assert Wallet(path, CardWalletKey(session, Pins())).balance(EUR) == 105   # the right PIN still opens it
    with pytest.raises(PaymentError, match="nothing can ask for it"):
        Wallet(path, CardWalletKey(card("alice"), None))                      # no PIN entry: stays closed


def test_a_token_wallet_is_not_opened_as_a_card_wallet(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps({"wrapped": "AA==", "nonce": "AA==", "ciphertext": "AA=="}))
    with pytest.raises(WrongCardError, match="not sealed to a card"):
        Wallet(path, CardWalletKey(card("alice"), Pins()))


def test_the_ecash_module_opens_the_card_wallet_with_the_party_pin_entry(card: Callable[[str], PivSession],
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    selects: list[int] = []
    pins = Pins()
    ctx = PartyContext(enter_pin=pins, currency=EUR, select_signer=lambda: selects.append(1))
    module = EcashModule(ctx)
    w = module.use_card_wallet(path, card("alice"))
    assert ctx.wallet is w and selects                          # PIV re-selected before the card is used
    w.add(list(COINS))
    assert [i.available for i in module.instruments()] == [105]
    ctx2 = PartyContext(enter_pin=pins, currency=EUR)
    assert EcashModule(ctx2).use_card_wallet(path, card("alice")).balance(EUR) == 105
    assert len(pins.asked) == 1


def test_the_pin_goes_through_the_tinguin(card: Callable[[str], PivSession], tmp_path: Path) -> None:
    """The party's PIN entry for users is ``tinguin_pin``: the scripted user types the PIN on the PIN screen."""
    from semper.client.commerce.pin import tinguin_pin
    from semper.client.payment.errors import InstrumentError
    from semper.client.tinguin.api import Script, run_scripted
    path = tmp_path / "wallet.json"
    _filled(path, CardWalletKey(card("alice"), Pins()))
    said: list[str] = []

    def workflow(ui: Any) -> int:
        return open_card_wallet(path, card("alice"), PartyContext(enter_pin=tinguin_pin(ui))).balance(EUR)

    assert run_scripted(workflow, script=Script(pin=PIN.decode()), phrase=None, say=said.append, timeout=60) == 105
    assert any("PIN entry verified" in s for s in said)
    with pytest.raises(InstrumentError, match="PIN was not verified"):
        run_scripted(workflow, script=Script(pin="9999"), phrase=None, say=said.append, timeout=60)


@pytest.mark.pcsc
def test_through_pcscd(cards: dict[str, Path], tmp_path: Path) -> None:
    from semper.hardware.pcscd import VirtualCards
    from semper.hardware.transport import PcscConnection
    images = []
    for name in ("alice", "mallory"):
        shutil.copyfile(cards[name], tmp_path / f"{name}.card")
        images.append(tmp_path / f"{name}.card")
    path = tmp_path / "wallet.json"
    with VirtualCards(images, sync=False) as vc:
        alice, mallory = vc.readers[0], vc.readers[1]
        with PcscConnection(alice) as conn:
            _filled(path, CardWalletKey(PivSession(conn), Pins()))
        with PcscConnection(alice) as conn:
            assert Wallet(path, CardWalletKey(PivSession(conn), Pins())).coins == COINS
        with PcscConnection(mallory) as conn, pytest.raises(WrongCardError):
            Wallet(path, CardWalletKey(PivSession(conn), Pins()))
