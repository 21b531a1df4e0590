"""Connections to a card and the APDU processor on top of them.

A *connection* moves raw bytes (PC/SC through pcscd, or a card OS in the same process). The
:class:`ApduSession` on top turns typed commands into bytes and back: it splits long data into a
command chain (or uses extended length), follows 61xx with GET RESPONSE, retries 6Cxx with the
right Le, and turns every status word other than 9000 into an exception from ``hardware.errors``.
"""
from __future__ import annotations

from typing import Protocol

from . import errors
from .iso7816 import AID, CLA_ISO, INS, P1_SELECT_BY_AID, Apdu, error_for

MAX_GET_RESPONSE = 256            # bounds the loop: 256 * 256 bytes is more than any answer here


class Connection(Protocol):
    """Raw APDU exchange with one card."""

    reader: str

    def transmit(self, apdu: bytes) -> bytes: ...

    @property
    def atr(self) -> bytes: ...

    def close(self) -> None: ...


class CardLike(Protocol):
    def transmit(self, raw: bytes) -> bytes: ...

    @property
    def atr(self) -> bytes: ...


class InProcessConnection:
    """A card OS object called directly: the same card code, no pcscd (unit tests, benches)."""

    def __init__(self, card: CardLike, reader: str = "in-process") -> None:
        self.card = card
        self.reader = reader

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def close(self) -> None:
        pass


class PcscConnection:
    """A card in a PC/SC reader, through pcscd (pyscard's thin ``scard`` layer, for speed)."""

    def __init__(self, reader: str, *, exclusive: bool = False) -> None:
        from smartcard import scard
        self._scard = scard
        self.reader = reader
        self._ctx = None
        self._card = None
        rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if rc != scard.SCARD_S_SUCCESS:
            raise errors.ReaderError("cannot reach the PC/SC service (is pcscd running?): "
                                     f"{scard.SCardGetErrorMessage(rc)}")
        self._ctx = ctx
        share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        rc, card, proto = scard.SCardConnect(ctx, reader, share, scard.SCARD_PROTOCOL_T1 | scard.SCARD_PROTOCOL_T0)
        if rc != scard.SCARD_S_SUCCESS:
            scard.SCardReleaseContext(ctx)
            self._ctx = None
            if rc == scard.SCARD_E_NO_SMARTCARD or rc == scard.SCARD_W_REMOVED_CARD:
                raise errors.ReaderError(f"no card in reader {reader!r}")
            if rc == scard.SCARD_E_UNKNOWN_READER:
                raise errors.ReaderError(f"no reader named {reader!r}; 'semper readers' lists them")
            raise errors.ReaderError(f"cannot connect to the card in {reader!r}: {scard.SCardGetErrorMessage(rc)}")
        self._card = card
        self._pci = scard.SCARD_PCI_T1 if proto == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0

    def transmit(self, apdu: bytes) -> bytes:
        if self._card is None:
            raise errors.ReaderError("connection is closed")
        rc, response = self._scard.SCardTransmit(self._card, self._pci, list(apdu))
        if rc != self._scard.SCARD_S_SUCCESS:
            if rc in (self._scard.SCARD_W_REMOVED_CARD, self._scard.SCARD_E_NO_SMARTCARD,
                      self._scard.SCARD_W_RESET_CARD):
                raise errors.CardRemovedError(f"the card in {self.reader!r} was removed or reset")
            raise errors.TransportError(f"PC/SC transmit failed: {self._scard.SCardGetErrorMessage(rc)}")
        return bytes(response)

    @property
    def atr(self) -> bytes:
        rc, _reader, _state, _proto, atr = self._scard.SCardStatus(self._card)
        return bytes(atr) if rc == self._scard.SCARD_S_SUCCESS else b""

    def control(self, code: int, data: bytes = b"") -> bytes:
        rc, out = self._scard.SCardControl(self._card, code, list(data))
        if rc != self._scard.SCARD_S_SUCCESS:
            raise errors.TransportError(f"reader control {code:#x} failed: {self._scard.SCardGetErrorMessage(rc)}")
        return bytes(out)

    def close(self) -> None:
        if self._card is not None:
            self._scard.SCardDisconnect(self._card, self._scard.SCARD_LEAVE_CARD)
            self._card = None
        if self._ctx is not None:
            self._scard.SCardReleaseContext(self._ctx)
            self._ctx = None

    def __enter__(self) -> PcscConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ApduSession:
    """Typed commands in, response data out; status words become exceptions."""

    def __init__(self, connection: Connection, *, extended: bool = False, chunk: int = 255) -> None:
        self.connection = connection
        self.extended = extended
        self.chunk = chunk

    def select(self, aid: AID, context: str = "") -> bytes:
        """SELECT the applet ``aid`` by name (the card's answer: its FCI, or nothing); NotFoundError when the
        card does not carry it. The one SELECT the host sends: every applet session and the reader probe
        use it."""
        return self.send(Apdu(CLA_ISO, INS.SELECT, P1_SELECT_BY_AID, 0x00, aid.value, 0),
                         context or f"select the {aid.name.lower()} applet")

    def send(self, apdu: Apdu, context: str = "") -> bytes:
        data = apdu.data
        if not self.extended and len(data) > self.chunk:
            # command chaining: every part but the last carries CLA bit 0x10
            for i in range(0, len(data) - self.chunk, self.chunk):
                part = Apdu(apdu.cla | 0x10, apdu.ins, apdu.p1, apdu.p2, data[i:i + self.chunk])
                body, sw = self._exchange(part.encode(False))
                if sw != 0x9000:
                    raise error_for(sw, context)
            last = data[(len(data) - 1) // self.chunk * self.chunk:]
            apdu = Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, last, apdu.le)
        long_form = self.extended and len(apdu.data) > 255
        raw = apdu.encode(True if long_form else None)
        try:
            body, sw = self._exchange(raw)
        except errors.TransportError:
            if not long_form:
                raise
            # a link that carries no extended length (T=0; a CCID reader that exchanges short APDUs) fails
            # the transmit itself: from now on this session chains, and this command goes again as a
            # chain. Should the card have run it after all (its answer lost), the applet answers the
            # command again as it answers any command repeated (the PSAM: a proof it took already).
            self.extended = False
            return self.send(apdu, context)
        if long_form and sw == 0x6700:
            # a card that takes no extended length refuses the length before it runs the command
            self.extended = False
            return self.send(apdu, context)
        if sw >> 8 == 0x6C:                               # wrong Le: send again with the right one
            body, sw = self._exchange(Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, apdu.data, sw & 0xFF).encode())
        out = bytearray(body)
        rounds = 0
        while sw >> 8 == 0x61:
            rounds += 1
            if rounds > MAX_GET_RESPONSE:
                raise errors.TransportError("card keeps announcing more response data; giving up")
            body, sw = self._exchange(Apdu(CLA_ISO, INS.GET_RESPONSE, 0, 0, b"", (sw & 0xFF) or 256).encode())
            out += body
        if sw != 0x9000:
            raise error_for(sw, context)
        return bytes(out)

    def _exchange(self, raw: bytes) -> tuple[bytes, int]:
        resp = self.connection.transmit(raw)
        if len(resp) < 2:
            raise errors.TransportError(f"the card's answer has no status word ({resp.hex()})")
        return resp[:-2], (resp[-2] << 8) | resp[-1]
