"""The production costs the test session lowers for speed (conftest.py) are still the production defaults.

The session's cards verify PINs at scrypt N = 2^10 and its banks make 1024-bit RSA keys; what semper
itself makes (a card personalised by ``semper card new``, a bank by ``semper bank init``) must keep
N = 2^14 and 2048-bit keys. The card's side is also checked on a card made at the production cost
(test_card_image_attacks.py).
"""
from __future__ import annotations

import inspect

import conftest

from semper.card_applet_sim import crypto


def test_the_card_pin_kdf_default_is_the_production_cost() -> None:
    assert (crypto.PIN_KDF_LOG2_N, crypto.PIN_KDF_R, crypto.PIN_KDF_P) == (14, 8, 1)
    assert inspect.signature(crypto.pin_verifier).parameters["log2_n"].default == 14


def test_the_rsa_key_size_default_is_2048_bits() -> None:
    production = conftest._production_rsa_generate
    assert inspect.signature(production).parameters["bits"].default == 2048
