"""PKCS#11 return values as the project's exceptions, with messages a person can act on.

A token must look like a card to the layers above, so a wrong PIN on a token is the same
``WrongPinError`` as on a card, a blocked PIN the same ``PinBlockedError``. The raw ``CKR_`` name
is kept on the exception (``ckr``) and appended to the message for logs, never as the message's
only content.

Two sources feed this module: python-pkcs11 raises one exception class per CKR code, and the few
calls made directly through the module's function list (``hsm.raw``) return the code itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pkcs11.exceptions as p11x

from semper.hardware import errors as hw

# the CKR codes that get their own message; the rest fall back to a generic TokenError
CKR = {
    0x005: "CKR_GENERAL_ERROR", 0x006: "CKR_FUNCTION_FAILED", 0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY", 0x032: "CKR_DEVICE_REMOVED", 0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID", 0x070: "CKR_MECHANISM_INVALID", 0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x0A0: "CKR_PIN_INCORRECT", 0x0A1: "CKR_PIN_INVALID", 0x0A2: "CKR_PIN_LEN_RANGE",
    0x0A3: "CKR_PIN_EXPIRED", 0x0A4: "CKR_PIN_LOCKED", 0x0B0: "CKR_SESSION_CLOSED",
    0x0B3: "CKR_SESSION_HANDLE_INVALID", 0x0B5: "CKR_SESSION_READ_ONLY", 0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED", 0x0E2: "CKR_TOKEN_WRITE_PROTECTED", 0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN", 0x102: "CKR_USER_PIN_NOT_INITIALIZED", 0x103: "CKR_USER_TYPE_INVALID",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
}
CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_ALREADY_LOGGED_IN = 0x0A0, 0x0A4, 0x100

# python-pkcs11's exception classes back to their CKR codes
_EXCEPTION_RV: dict[type[Exception], int] = {
    p11x.GeneralError: 0x005, p11x.FunctionFailed: 0x006, p11x.DeviceError: 0x030, p11x.DeviceMemory: 0x031,
    p11x.DeviceRemoved: 0x032, p11x.FunctionNotSupported: 0x054, p11x.KeyHandleInvalid: 0x060,
    p11x.MechanismInvalid: 0x070, p11x.ObjectHandleInvalid: 0x082, p11x.PinIncorrect: 0x0A0,
    p11x.PinInvalid: 0x0A1, p11x.PinLenRange: 0x0A2, p11x.PinExpired: 0x0A3, p11x.PinLocked: 0x0A4,
    p11x.SessionClosed: 0x0B0, p11x.SessionHandleInvalid: 0x0B3, p11x.SessionReadOnly: 0x0B5,
    p11x.TokenNotPresent: 0x0E0, p11x.TokenNotRecognised: 0x0E1, p11x.TokenWriteProtected: 0x0E2,
    p11x.UserAlreadyLoggedIn: 0x100, p11x.UserNotLoggedIn: 0x101, p11x.UserPinNotInitialized: 0x102,
}

SO_RESET_HINT = ("pkcs11-tool --module MODULE --token-label LABEL --login --login-type so --init-pin")


class TokenWrongPinError(hw.WrongPinError):
    """A wrong PIN on a token: the card's exception, with the token named."""

    def __init__(self, token: str | None, tries_left: int | None = None, ckr: str = "CKR_PIN_INCORRECT") -> None:
        super().__init__(tries_left)
        where = f" for token {token!r}" if token else ""
        tail = {None: "", 0: "; the PIN is now blocked (a card's PUK or a token's SO PIN unblocks it)",
                1: "; one more wrong PIN blocks it"}.get(
            tries_left, f"; {tries_left} tries left")
        self.args = (f"wrong PIN{where}{tail} ({ckr})",)
        self.ckr = ckr


class TokenPinBlockedError(hw.PinBlockedError):
    """The user PIN is locked: a card wants its PUK, a software token its security officer."""

    def __init__(self, token: str | None, ckr: str = "CKR_PIN_LOCKED") -> None:
        super().__init__()
        where = f" of token {token!r}" if token else ""
        self.args = (f"the PIN{where} is blocked; on a card unblock it with the PUK, on a software token the "
                     f"security officer sets a new one with the SO PIN (e.g. {SO_RESET_HINT}) ({ckr})",)
        self.ckr = ckr


def _name(rv: int) -> str:
    return CKR.get(rv, f"CKR 0x{rv:08X}")


def from_rv(rv: int, *, token: str | None = None, action: str = "use the token") -> hw.HardwareError:
    """The exception for a PKCS#11 return value ``rv`` met while trying to ``action``."""
    name = _name(rv)
    t = f"token {token!r}" if token else "the token"
    makers: dict[int, Callable[[], hw.HardwareError]] = {
        0x0A0: lambda: TokenWrongPinError(token, None, name),
        0x0A4: lambda: TokenPinBlockedError(token, name),
        0x0A1: lambda: hw.InvalidInputError(f"{t} does not accept a PIN with these characters ({name})"),
        0x0A2: lambda: hw.InvalidInputError(f"{t} does not accept a PIN of this length "
                                            f"(SoftHSM2: 4 to 255 characters; PIV card: 6 to 8) ({name})"),
        0x0A3: lambda: hw.ConditionsError(f"the PIN of {t} has expired; change it first, e.g. with "
                                          f"'pkcs11-tool --change-pin' ({name})"),
        0x101: lambda: hw.PinRequiredError(f"{t} needs its PIN before it can {action} ({name})"),
        0x102: lambda: hw.TokenError(f"{t} has no user PIN yet; its security officer sets one with the SO PIN "
                                     f"(e.g. {SO_RESET_HINT}) ({name})"),
        0x032: lambda: hw.CardRemovedError(f"{t} went away while trying to {action}; insert it and try again ({name})"),
        0x0E0: lambda: hw.CardRemovedError(f"{t} is not present (card removed or reader gone); insert it and try "
                                           f"again ({name})"),
        0x0E1: lambda: hw.TokenError(f"the PKCS#11 module does not recognise the card or token in this slot; "
                                     f"is it the right module for it? ({name})"),
        0x0E2: lambda: hw.TokenError(f"{t} is write-protected, so semper cannot {action} on it ({name})"),
        0x0B5: lambda: hw.TokenError(f"{t} refused to {action} in a read-only session ({name})"),
        0x070: lambda: hw.TokenError(f"{t} cannot {action} with this mechanism; semper needs raw ECDSA "
                                     f"(CKM_ECDSA) on a P-256 key ({name})"),
        0x0B0: lambda: hw.TokenError(f"the session with {t} was closed (module re-initialised or token removed); "
                                     f"open the token again ({name})"),
        0x0B3: lambda: hw.TokenError(f"the session with {t} is no longer valid (module re-initialised or token "
                                     f"removed); open the token again ({name})"),
        0x060: lambda: hw.NotFoundError(f"the key on {t} is gone (deleted or token changed) ({name})"),
        0x082: lambda: hw.NotFoundError(f"an object on {t} is gone (deleted or token changed) ({name})"),
        0x190: lambda: hw.TokenError(f"the PKCS#11 module was shut down while trying to {action}; "
                                     f"open the token again ({name})"),
    }
    make = makers.get(rv)
    err = make() if make else hw.TokenError(f"the PKCS#11 module could not {action} on {t} ({name})")
    err.ckr = name
    return err


def from_exception(exc: BaseException, *, token: str | None = None, action: str = "use the token") -> hw.HardwareError:
    """The project's exception for one python-pkcs11 raised."""
    if isinstance(exc, hw.HardwareError):
        return exc
    for cls, rv in _EXCEPTION_RV.items():
        if type(exc) is cls:
            return from_rv(rv, token=token, action=action)
    t = f"token {token!r}" if token else "the token"
    detail = str(exc).strip()
    return hw.TokenError(f"the PKCS#11 module could not {action} on {t} "
                         f"({type(exc).__name__}{': ' + detail if detail else ''})")


@contextmanager
def translated(*, token: str | None = None, action: str = "use the token") -> Iterator[None]:
    """Run a block of python-pkcs11 calls; what it raises leaves as the project's exceptions."""
    try:
        yield
    except p11x.PKCS11Error as e:
        raise from_exception(e, token=token, action=action) from e
