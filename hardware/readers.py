"""PC/SC readers: discovery, card presence, insertion/removal events, PIN-pad features.

Every wait is bounded. When pcscd goes away (restart, crash) the monitor re-establishes its context
and carries on, reporting the readers as they come back.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from . import errors
from .iso7816 import AID

# PC/SC part 10: features a reader may offer through SCardControl(CM_IOCTL_GET_FEATURE_REQUEST)
FEATURE_VERIFY_PIN_DIRECT = 0x06
FEATURE_MODIFY_PIN_DIRECT = 0x07
FEATURE_IFD_PIN_PROPERTIES = 0x0A


def scard_ctl_code(code: int) -> int:
    """SCARD_CTL_CODE as pcsc-lite defines it on Linux."""
    return 0x42000000 + code


CM_IOCTL_GET_FEATURE_REQUEST = scard_ctl_code(3400)


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    card_present: bool
    atr: bytes = b""


@dataclass(frozen=True)
class ReaderEvent:
    kind: str          # "reader-added", "reader-removed", "card-inserted", "card-removed", "service-lost"
    reader: str
    atr: bytes = b""


def _scard() -> ModuleType:
    try:
        from smartcard import scard
    except ImportError:  # pragma: no cover - pyscard is a hard dependency
        raise errors.ReaderError("pyscard is not installed; run 'make venv'") from None
    return scard


class _Context:
    def __init__(self) -> None:
        self.scard = _scard()
        rc, self.ctx = self.scard.SCardEstablishContext(self.scard.SCARD_SCOPE_USER)
        if rc != self.scard.SCARD_S_SUCCESS:
            raise errors.ReaderError("the PC/SC service is not running (start pcscd, or run 'semper demo')")

    def readers(self) -> list[str]:
        rc, names = self.scard.SCardListReaders(self.ctx, [])
        if rc == self.scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if rc != self.scard.SCARD_S_SUCCESS:
            raise errors.ReaderError(f"cannot list readers: {self.scard.SCardGetErrorMessage(rc)}")
        return list(names)

    def states(self, names: list[str], known: dict[str, int] | None = None, timeout_ms: int = 0
               ) -> list[tuple[str, int, bytes]]:
        s = self.scard
        query = [(n, (known or {}).get(n, s.SCARD_STATE_UNAWARE)) for n in names]
        rc, result = s.SCardGetStatusChange(self.ctx, timeout_ms, query)
        if rc == s.SCARD_E_TIMEOUT:
            return [(n, st, b"") for n, st in query]
        if rc != s.SCARD_S_SUCCESS:
            raise errors.ReaderError(f"cannot read reader states: {s.SCardGetErrorMessage(rc)}")
        return [(name, state, bytes(atr)) for name, state, atr in result]

    def close(self) -> None:
        self.scard.SCardReleaseContext(self.ctx)


def list_readers() -> list[ReaderInfo]:
    ctx = _Context()
    try:
        names = ctx.readers()
        if not names:
            return []
        s = ctx.scard
        return [ReaderInfo(name, bool(state & s.SCARD_STATE_PRESENT), atr) for name, state, atr in ctx.states(names)]
    finally:
        ctx.close()


def wait_for_card(reader: str, timeout: float = 10.0, present: bool = True) -> bool:
    """Wait until ``reader`` shows a card (or none, with present=False); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for info in list_readers():
                if info.name == reader and info.card_present == present:
                    return True
        except errors.ReaderError:
            pass
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class ReaderSurvey:
    """One reader as ``semper readers`` and the TINGUIN's reader screen show it."""

    name: str
    card_present: bool
    atr: bytes = b""
    applets: tuple[AID, ...] = ()          # semper's applets the card answered a SELECT for
    pin_pad: bool = False
    problem: str = ""                      # why the card could not be read ("" when it could)


def probe(reader: str, aids: tuple[AID, ...] = tuple(AID), *, pin_pad: bool = False) -> tuple[tuple[AID, ...], bool]:
    """Which of ``aids`` the card in ``reader`` carries (one SELECT each, nothing else sent), and, when
    asked, whether the reader has a PIN pad. The one AID probe: ``find_card``, ``survey`` and through
    them every command and screen that looks for a card use it. HardwareError when the card cannot be
    reached at all."""
    from .transport import ApduSession, PcscConnection
    found = []
    with PcscConnection(reader) as conn:
        session = ApduSession(conn)
        for aid in aids:
            try:
                session.select(aid)
                found.append(aid)
            except errors.CardError:
                pass
        pad = has_pin_pad(conn) if pin_pad else False
    return tuple(found), pad


def survey() -> list[ReaderSurvey]:
    """Every reader, and for each card present: its ATR, semper's applets on it, the reader's PIN pad."""
    out = []
    for info in list_readers():
        if not info.card_present:
            out.append(ReaderSurvey(info.name, False))
            continue
        try:
            applets, pad = probe(info.name, pin_pad=True)
            out.append(ReaderSurvey(info.name, True, info.atr, applets, pad))
        except errors.HardwareError as e:
            out.append(ReaderSurvey(info.name, True, info.atr, problem=str(e)))
    return out


def find_card(aid: AID, exclude: tuple[str, ...] = ()) -> str:
    """The first reader whose card has the applet ``aid``; ReaderError when none has."""
    seen = []
    for info in list_readers():
        if not info.card_present or info.name in exclude:
            continue
        seen.append(info.name)
        try:
            if aid in probe(info.name, (aid,))[0]:
                return info.name
        except errors.HardwareError:
            continue
    what = {AID.PURSE: "a purse card", AID.PSAM: "a PSAM", AID.PIV: "a PIV card"}.get(aid, "the card")
    raise errors.ReaderError(f"no reader holds {what} (readers with a card: {', '.join(seen) or 'none'})")


def monitor(duration: float, poll_ms: int = 200) -> Iterator[ReaderEvent]:
    """Yield reader and card events for ``duration`` seconds, surviving a pcscd restart."""
    deadline = time.monotonic() + duration
    s = _scard()
    ctx: _Context | None = None
    present: dict[str, bytes | None] = {}          # reader -> ATR when a card is in, None when empty
    while time.monotonic() < deadline:
        if ctx is None:
            try:
                ctx = _Context()
            except errors.ReaderError:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
        try:
            names = ctx.readers()
            for gone in [n for n in present if n not in names]:
                if present.pop(gone) is not None:
                    yield ReaderEvent("card-removed", gone)
                yield ReaderEvent("reader-removed", gone)
            for name, state, atr in (ctx.states(names) if names else []):
                has = bool(state & s.SCARD_STATE_PRESENT)
                if name not in present:
                    yield ReaderEvent("reader-added", name)
                    present[name] = None
                if has and present[name] is None:
                    present[name] = atr
                    yield ReaderEvent("card-inserted", name, atr)
                elif not has and present[name] is not None:
                    present[name] = None
                    yield ReaderEvent("card-removed", name)
            wait = int(min(poll_ms, max(0.0, deadline - time.monotonic()) * 1000))
            if names and wait > 0:
                known = {n: st for n, st, _ in ctx.states(names)}
                ctx.states(names, {n: st & ~s.SCARD_STATE_CHANGED for n, st in known.items()}, wait)
            elif wait > 0:
                time.sleep(wait / 1000)
        except errors.ReaderError:
            # pcscd went away: report it once, then re-establish when it is back
            try:
                ctx.close()
            except Exception:
                pass
            ctx = None
            yield ReaderEvent("service-lost", "")
            for name in list(present):
                if present.pop(name) is not None:
                    yield ReaderEvent("card-removed", name)
                yield ReaderEvent("reader-removed", name)


# ---- PIN pad (PC/SC part 10) -------------------------------------------------------------------
def parse_features(tlv: bytes) -> dict[int, int]:
    """Parse the GET_FEATURE_REQUEST answer: tag(1) len(1)=4 control code(4, big-endian)."""
    out: dict[int, int] = {}
    i = 0
    while i + 2 <= len(tlv):
        tag, ln = tlv[i], tlv[i + 1]
        value = tlv[i + 2:i + 2 + ln]
        if ln != 4 or len(value) != 4:
            raise errors.TransportError("reader returned a malformed PC/SC feature list")
        out[tag] = int.from_bytes(value, "big")
        i += 2 + ln
    if i != len(tlv):
        raise errors.TransportError("reader returned a malformed PC/SC feature list")
    return out


def reader_features(connection: object) -> dict[int, int]:
    """The part-10 features of the reader behind a PcscConnection ({} when it has none, or is no reader)."""
    control = getattr(connection, "control", None)
    if control is None:
        return {}
    try:
        return parse_features(control(CM_IOCTL_GET_FEATURE_REQUEST))
    except errors.TransportError:
        return {}


def has_pin_pad(connection: object) -> bool:
    return FEATURE_VERIFY_PIN_DIRECT in reader_features(connection)


def verify_pin_structure(apdu_template: bytes, min_len: int = 4, max_len: int = 8, block: int = 8) -> bytes:
    """PIN_VERIFY_STRUCTURE (part 10, 2.5.2) for an ASCII PIN, left-justified, FF-padded to ``block``."""
    import struct
    return struct.pack(
        "<BBBBBHBBHB3sI",
        0x00,                   # bTimerOut: reader default
        0x00,                   # bTimerOut2
        0x82,                   # bmFormatString: byte units, position 0, left-justified, ASCII
        block & 0x0F,           # bmPINBlockString: no length field, block of `block` bytes
        0x00,                   # bmPINLengthFormat
        (min_len << 8) | max_len,   # wPINMaxExtraDigit
        0x02,                   # bEntryValidationCondition: OK key
        0x01,                   # bNumberMessage
        0x0409,                 # wLangId
        0x00,                   # bMsgIndex
        b"\x00\x00\x00",        # bTeoPrologue
        len(apdu_template),
    ) + apdu_template
