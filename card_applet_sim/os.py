"""The card OS: power states, APDU parsing, chaining both ways, SELECT, dispatch, transactions.

Everything that reaches ``transmit`` gets a response with a status word; nothing an outsider sends
can raise out of it or leave a half-made change. Each command runs in its own store transaction,
committed only when the applet returns normally.
"""
from __future__ import annotations

import logging
import os as _os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import apdu
from .applet import Applet
from .keys import KeyFolder, KeySource
from .store import Store
from .sw import SW, CardError, sw_bytes

log = logging.getLogger(__name__)

INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0
MAX_CHAIN = 65535
OS_APPLETS_KEY = "os/applets"


def _atr() -> bytes:
    # TS=3B, T0=8A (TD1 present, 10 historical bytes), TD1=80 (TD2 present, T=0),
    # TD2=01 (T=1), historical bytes "SEMPER-SIM", TCK = XOR of T0..last historical byte.
    body = bytes([0x8A, 0x80, 0x01]) + b"SEMPER-SIM"
    tck = 0
    for b in body:
        tck ^= b
    return bytes([0x3B]) + body + bytes([tck])


ATR = _atr()


@dataclass
class _Chain:
    header: tuple[int, int, int, int]
    data: bytearray = field(default_factory=bytearray)
    extended: bool = False


class CardOS:
    """One card: an image file plus the applets installed on it."""

    def __init__(self, store: Store, applets: list[Applet]) -> None:
        self.store = store
        self.applets = applets
        self.selected: Applet | None = None
        self._pending_response = b""
        self._chain: _Chain | None = None
        self.powered = True

    # construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | _os.PathLike[str], applet_names: list[str], *, sync: bool = True,
               keys: KeySource | None = None) -> CardOS:
        """A new card image; its sealing key goes to ``keys`` (default: the key folder, keys.py)."""
        from .applets import REGISTRY
        unknown = [n for n in applet_names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown applet(s): {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
        store = Store.create(path, {OS_APPLETS_KEY: ",".join(applet_names).encode()}, sync=sync,
                             keys=keys or KeyFolder.default())
        store.begin()
        for name in applet_names:
            REGISTRY[name].install(store)
        store.commit()
        return cls._from_store(store)

    @classmethod
    def open(cls, path: str | _os.PathLike[str], *, sync: bool = True, write_chunk: int = 0,
             keys: KeySource | None = None, read_only: bool = False) -> CardOS:
        store = Store.open(Path(path), sync=sync, keys=keys or KeyFolder.default(), read_only=read_only)
        store.write_chunk = write_chunk
        return cls._from_store(store)

    @classmethod
    def _from_store(cls, store: Store) -> CardOS:
        from .applets import REGISTRY
        names = (store.get(OS_APPLETS_KEY) or b"").decode().split(",")
        applets = [REGISTRY[n](store) for n in names if n in REGISTRY]
        return cls(store, applets)

    def close(self) -> None:
        self.store.close()

    # power --------------------------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        return ATR

    def power_on(self) -> bytes:
        self._clear_session()
        self.powered = True
        return ATR

    def power_off(self) -> None:
        self._clear_session()
        self.powered = False

    def reset(self) -> bytes:
        return self.power_on()

    def _clear_session(self) -> None:
        if self.store.in_transaction:
            self.store.abort()
        for a in self.applets:
            a.reset()
        self.selected = None
        self._pending_response = b""
        self._chain = None

    # the one entry point ------------------------------------------------------------------------
    def transmit(self, raw: bytes) -> bytes:
        """Process one C-APDU and return the R-APDU (data + SW1 SW2). Never raises."""
        try:
            if not self.powered:
                self.power_on()
            return self._transmit(bytes(raw))
        except CardError as e:
            return sw_bytes(e.sw)
        except Exception:                                  # the card must never crash
            log.exception("card OS internal error")
            if self.store.in_transaction:
                self.store.abort()
            return sw_bytes(SW.UNKNOWN)

    def _transmit(self, raw: bytes) -> bytes:
        cmd = apdu.parse(raw)
        self._check_class(cmd.cla)
        if cmd.ins == INS_GET_RESPONSE and not cmd.chained:
            return self._get_response(cmd)
        self._pending_response = b""                       # any other command drops unread data
        if (cmd.ins & 0xF0) in (0x60, 0x90):
            raise CardError(SW.INS_NOT_SUPPORTED, "invalid INS")

        # command chaining: collect, then run the assembled command once
        if self._chain is not None:
            if cmd.header != self._chain.header:
                self._chain = None
                raise CardError(SW.LAST_COMMAND_OF_CHAIN_EXPECTED)
            if len(self._chain.data) + len(cmd.data) > MAX_CHAIN:
                self._chain = None
                raise CardError(SW.WRONG_LENGTH, "chained data too long")
            self._chain.data += cmd.data
            if cmd.chained:
                return sw_bytes(SW.OK)
            chain, self._chain = self._chain, None
            cmd = apdu.Command(cmd.cla, cmd.ins, cmd.p1, cmd.p2, bytes(chain.data), cmd.ne, cmd.extended)
        elif cmd.chained:
            self._chain = _Chain(cmd.header, bytearray(cmd.data), cmd.extended)
            return sw_bytes(SW.OK)

        if cmd.ins == INS_SELECT and cmd.header[0] == 0x00:
            data = self._select(cmd)
        else:
            data = self._dispatch(cmd)
        return self._respond(data, cmd.ne)

    @staticmethod
    def _check_class(cla: int) -> None:
        if cla == 0xFF or 0x20 <= cla < 0x40:
            raise CardError(SW.CLA_NOT_SUPPORTED)
        if 0x40 <= cla < 0x80 or cla & 0x03:
            raise CardError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        if cla & 0x0C:
            raise CardError(SW.SECURE_MESSAGING_NOT_SUPPORTED)

    def _respond(self, data: bytes, ne: int) -> bytes:
        """Send what fits in Ne now; the rest waits for GET RESPONSE, announced by 61xx."""
        if not data:
            return sw_bytes(SW.OK)
        if ne and len(data) <= ne:
            return data + sw_bytes(SW.OK)
        now, rest = data[:ne], data[ne:]
        self._pending_response = rest
        return now + bytes([0x61, min(len(rest), 256) & 0xFF])

    def _get_response(self, cmd: apdu.Command) -> bytes:
        if cmd.header[0] != 0x00:
            raise CardError(SW.CLA_NOT_SUPPORTED)
        if cmd.p1 or cmd.p2:
            raise CardError(SW.INCORRECT_P1P2)
        if cmd.data:
            raise CardError(SW.WRONG_LENGTH)
        if not self._pending_response:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no response data waiting")
        data, self._pending_response = self._pending_response, b""
        return self._respond(data, cmd.ne or 256)

    def _select(self, cmd: apdu.Command) -> bytes:
        if cmd.p1 != 0x04:
            raise CardError(SW.FILE_NOT_FOUND, "only selection by AID is supported")
        if cmd.p2 not in (0x00, 0x0C):
            raise CardError(SW.INCORRECT_P1P2)
        if not 1 <= len(cmd.data) <= 16:
            raise CardError(SW.WRONG_LENGTH)
        target = next((a for a in self.applets if a.AID.startswith(cmd.data)), None)
        if target is None:
            raise CardError(SW.FILE_NOT_FOUND)
        if self.selected is not None and self.selected is not target:
            self.selected.deselect()
        self.selected = target
        fci = self._run(target.select)
        return b"" if cmd.p2 == 0x0C else fci

    def _dispatch(self, cmd: apdu.Command) -> bytes:
        if self.selected is None:
            raise CardError(SW.INS_NOT_SUPPORTED, "no applet selected")
        applet = self.selected
        return self._run(lambda: applet.process(cmd))

    def _run(self, fn: Callable[[], bytes]) -> bytes:
        self.store.begin()
        try:
            result = fn()
        except BaseException:
            self.store.abort()
            raise
        self.store.commit()
        return result
