"""The production costs the test session lowers for speed (conftest.py) are still the production defaults.

The session's cards verify PINs at scrypt N = 2^10 and its banks make 1024-bit RSA keys; what semper
itself makes (a card personalised by ``semper card new``, a bank by ``semper bank init``) must keep
N = 2^14 and 2048-bit keys. The card's side is also checked on a card made at the production cost
(test_card_image_attacks.py). Likewise the tests' scripted TINGUIN user confirms at once only where a test
passes ``min_read=0``; by default it waits out the TINGUIN's reading rule.
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


def test_the_scripted_user_waits_out_the_reading_rule_unless_a_test_says_otherwise() -> None:
    """``run_scripted(min_read=0)`` is how the in-process tests that confirm many deals skip the 0.6 s a
    confirmation must be on screen (docs/tinguin.md); without it the scripted TINGUIN keeps that rule."""
    from semper.client.tinguin.api import run_scripted

    def reading(ui: object) -> float:
        return ui.app.min_read                                    # type: ignore[attr-defined]
    assert run_scripted(reading, phrase=None, say=lambda _line: None, timeout=30) == 0.6
    assert run_scripted(reading, phrase=None, say=lambda _line: None, timeout=30, min_read=0) == 0
