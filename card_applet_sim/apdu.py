"""ISO 7816-4 command APDU parsing on the card side: cases 1-4, short and extended lengths.

Parsing is strict: any byte string that is not exactly one well-formed command is refused with
6700 before an applet sees it, so applets only ever handle well-formed commands.
"""
from __future__ import annotations

from dataclasses import dataclass

from .sw import SW, CardError

CHAIN_BIT = 0x10


@dataclass(frozen=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int = 0            # expected response length; 0 = no response data expected
    extended: bool = False

    @property
    def chained(self) -> bool:
        """True when more command data follows in the next APDU (ISO 7816-4 5.3.3)."""
        return bool(self.cla & CHAIN_BIT)

    @property
    def header(self) -> tuple[int, int, int, int]:
        return (self.cla & ~CHAIN_BIT & 0xFF, self.ins, self.p1, self.p2)


def parse(raw: bytes) -> Command:
    """Decode one C-APDU; raise CardError(6700) when its length fields do not add up."""
    n = len(raw)
    if n < 4:
        raise CardError(SW.WRONG_LENGTH, "shorter than a header")
    cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
    if n == 4:                                   # case 1
        return Command(cla, ins, p1, p2)
    b = raw[4]
    if n == 5:                                   # case 2 short
        return Command(cla, ins, p1, p2, b"", b or 256)
    if b != 0:                                   # short case 3 / 4
        if n == 5 + b:
            return Command(cla, ins, p1, p2, bytes(raw[5:]), 0)
        if n == 6 + b:
            return Command(cla, ins, p1, p2, bytes(raw[5:5 + b]), raw[-1] or 256)
        raise CardError(SW.WRONG_LENGTH, "Lc does not match the data")
    # b == 0 and n > 5: extended length
    if n == 7:                                   # case 2 extended
        le = (raw[5] << 8) | raw[6]
        return Command(cla, ins, p1, p2, b"", le or 65536, True)
    if n < 8:
        raise CardError(SW.WRONG_LENGTH, "truncated extended length")
    lc = (raw[5] << 8) | raw[6]
    if lc == 0:
        raise CardError(SW.WRONG_LENGTH, "extended Lc of zero")
    if n == 7 + lc:                              # case 3 extended
        return Command(cla, ins, p1, p2, bytes(raw[7:]), 0, True)
    if n == 9 + lc:                              # case 4 extended
        le = (raw[-2] << 8) | raw[-1]
        return Command(cla, ins, p1, p2, bytes(raw[7:7 + lc]), le or 65536, True)
    raise CardError(SW.WRONG_LENGTH, "extended Lc does not match the data")
