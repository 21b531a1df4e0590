"""Finding the user's signing key, on a card or in a token, for the commands that need one.

One place decides where a token lives (``--dir``, else ``SOFTHSM2_CONF``, else
``$SEMPER_HOME/tokens``) and how a card's PIV signature key is reached (``--image`` in process,
``--reader`` or a search of the readers through pcscd), so every command finds the same key.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semper.hardware import errors as hw_errors
from semper.hardware.cards import connection
from semper.hardware.iso7816 import AID
from semper.hardware.piv import PivSession, PivSigner, Slot

from .support.paths import semper_home


def is_softhsm(module: str | None) -> bool:
    from semper.hsm.module import DEFAULT_MODULE
    return module is None or module == DEFAULT_MODULE or "softhsm" in os.path.basename(os.path.realpath(module)).lower()


def softhsm_store(folder: Path | None, create: bool) -> Any:
    """The SoftHSM2 folder in use (None when it does not exist and ``create`` is false)."""
    from semper.hsm.softhsm import CONF_NAME, SoftHsmStore
    if folder is None:
        if os.environ.get("SOFTHSM2_CONF"):
            return SoftHsmStore.from_conf(Path(os.environ["SOFTHSM2_CONF"]))
        folder = semper_home() / "tokens"
    if not create and not (folder / CONF_NAME).exists():
        return None
    return SoftHsmStore.in_folder(folder)


def token_module(module: str | None, folder: Path | None = None) -> Any:
    """The loaded PKCS#11 module, SoftHSM2 pointed at its folder; None when that folder is empty."""
    from semper.hsm.module import load
    if not is_softhsm(module):
        return load(module)
    store = softhsm_store(folder, create=False)
    return None if store is None else store.module(module)


@contextmanager
def token_signer(label: str, module: str | None = None, folder: Path | None = None) -> Iterator[Any]:
    from semper.hsm.signer import Pkcs11Signer
    loaded = token_module(module, folder)
    if loaded is None:
        raise hw_errors.TokenError(f"no token labelled {label!r}: the token folder does not exist yet "
                                   "(create one with 'semper token init --label ...')")
    with Pkcs11Signer(loaded, label) as signer:
        yield signer


@dataclass
class CardSigner:
    signer: PivSigner
    session: PivSession
    where: str

    def store_certificate(self, der: bytes) -> None:
        self.session.put_certificate(self.signer.slot, der)


@contextmanager
def card_signer(reader: str | None = None, image: Path | None = None, slot: Slot = Slot.SIGNATURE
                ) -> Iterator[CardSigner]:
    """The card's PIV key (9C by default: PIN right before each signature)."""
    with connection(AID.PIV, reader, image) as conn:
        where = f"the card image {image}" if image is not None else f"the card in {conn.reader!r}"
        try:
            session = PivSession(conn)
        except hw_errors.NotFoundError:
            raise hw_errors.NotFoundError(f"{where} has no PIV applet, so it holds no signature key") from None
        yield CardSigner(PivSigner(session, slot, label=where), session, where)
