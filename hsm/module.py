"""Loading a PKCS#11 module by path and finding a token in it by label.

Slot ids are not stable (SoftHSM2 gives a token a new slot id when it is initialised, OpenSC numbers
slots by reader), so a token is always found by its label. A module lists the tokens it saw at
C_Initialize: a token another process created, or a card inserted into a reader pcscd did not have
then, shows up only after the library is re-initialised, so a miss re-initialises once and looks
again (for SoftHSM2 only when its token folder holds a token the module has not listed, because
re-initialising ends every login in the process).

SoftHSM2 reads ``SOFTHSM2_CONF`` at C_Initialize. A module loaded with ``softhsm_conf`` is
initialised with that variable set to it (and the process environment restored afterwards); asking
for the same module with another configuration re-initialises it. Re-initialising ends every
session and login in this process: signers notice (``generation``) and reopen their session, and
need the PIN again.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pkcs11.exceptions as p11x
from pkcs11 import TokenFlag

from semper.hardware import errors as hw

from . import errors
from .raw import RawModule

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
OPENSC_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so"
_INSTALL_HINT = ("install it (Debian: 'apt-get install softhsm2' for SoftHSM2, 'apt-get install opensc' for "
                 "OpenSC) or pass --module with the path of a PKCS#11 library")


@dataclass(frozen=True)
class TokenInfo:
    """What C_GetTokenInfo says about one token, in names a listing can show."""

    label: str
    serial: str
    manufacturer: str
    model: str
    slot_id: int
    slot_description: str
    flags: int

    @property
    def initialized(self) -> bool:
        return bool(self.flags & TokenFlag.TOKEN_INITIALIZED)

    @property
    def user_pin_initialized(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_INITIALIZED)

    @property
    def login_required(self) -> bool:
        return bool(self.flags & TokenFlag.LOGIN_REQUIRED)

    @property
    def pin_locked(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_LOCKED)

    @property
    def pin_final_try(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_FINAL_TRY)

    @property
    def write_protected(self) -> bool:
        return bool(self.flags & TokenFlag.WRITE_PROTECTED)


@contextmanager
def _softhsm_env(conf: str | None) -> Iterator[None]:
    """SOFTHSM2_CONF set to ``conf`` for the duration of a C_Initialize (None: leave it alone)."""
    if conf is None:
        yield
        return
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = conf
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


class Module:
    """One PKCS#11 library loaded in this process (one per path; use ``load``)."""

    def __init__(self, path: str, softhsm_conf: str | None) -> None:
        self.path = path
        self.softhsm_conf = softhsm_conf
        self.generation = 0
        with _softhsm_env(softhsm_conf):
            try:
                self.lib = pkcs11.lib(path)
            except p11x.PKCS11Error as e:
                raise _load_error(path, softhsm_conf, e) from e
        try:
            self.raw = RawModule(path)
        except (OSError, AttributeError) as e:
            raise hw.TokenError(f"{path} is not a usable PKCS#11 module ({e}); {_INSTALL_HINT}") from e

    @property
    def is_softhsm(self) -> bool:
        return "softhsm" in f"{self.lib.manufacturer_id} {self.lib.library_description}".lower()

    def use_softhsm_conf(self, conf: str | None) -> None:
        """Re-initialise with another SoftHSM2 configuration (another token folder)."""
        self.softhsm_conf = conf
        self.reinitialize()

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize: see tokens made elsewhere; every session in this process ends."""
        with _softhsm_env(self.softhsm_conf):
            try:
                if self.lib.initialized:
                    self.lib.reinitialize()
                else:
                    self.lib.initialize()
            except p11x.PKCS11Error as e:
                raise _load_error(self.path, self.softhsm_conf, e) from e
        self.generation += 1

    # ---- tokens ------------------------------------------------------------------------------
    def tokens(self) -> list[TokenInfo]:
        """Every token present, uninitialised SoftHSM2 slots included (their label is empty)."""
        out = []
        with errors.translated(action="list the tokens"):
            for slot in self.lib.get_slots(token_present=True):
                try:
                    t = slot.get_token()
                except (p11x.TokenNotPresent, p11x.TokenNotRecognised, p11x.DeviceRemoved):
                    continue                               # a reader without a card, or a card it cannot use
                serial = t.serial.decode("ascii", "replace") if isinstance(t.serial, bytes) else str(t.serial)
                out.append(TokenInfo(t.label, serial.strip(), t.manufacturer_id.strip(), t.model.strip(),
                                     int(slot.slot_id), slot.slot_description.strip(), int(t.flags)))
        return out

    def token(self, label: str) -> pkcs11.Token:
        """The token labelled ``label``; re-initialises once when it is not there (see module doc)."""
        found = self._find(label)
        if found is None and self._reinit_could_help():
            self.reinitialize()
            found = self._find(label)
        if found is None:
            raise self._not_found(label)
        return found

    def _reinit_could_help(self) -> bool:
        """False when a re-initialisation cannot show anything new, so it need not end the logins.

        SoftHSM2's file store keeps one folder per token: as many folders as initialised tokens
        listed means no other process made one since. Any other module (a card may have come) or
        a configuration that cannot be read: re-initialise.
        """
        if not self.is_softhsm:
            return True
        conf = self.softhsm_conf or os.environ.get("SOFTHSM2_CONF") or "/etc/softhsm/softhsm2.conf"
        try:
            m = re.search(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", Path(conf).read_text(), re.MULTILINE)
            folders = sum(1 for p in Path(m.group(1)).iterdir() if p.is_dir()) if m else -1
        except OSError:
            return True
        return folders != sum(1 for t in self.tokens() if t.initialized)

    def token_info(self, label: str) -> TokenInfo:
        token = self.token(label)
        return next(t for t in self.tokens() if t.slot_id == token.slot.slot_id)

    def _find(self, label: str) -> pkcs11.Token | None:
        infos = [t for t in self.tokens() if t.initialized or t.label]
        hits = [t for t in infos if t.label == label]
        if not hits:                       # a 32-byte label field: OpenSC cuts long labels and adds "..."
            hits = [t for t in infos if t.label.endswith("...") and label.startswith(t.label[:-3])
                    and len(t.label[:-3]) >= 8]
        if len(hits) > 1:
            raise hw.TokenError(f"{len(hits)} tokens in {self.path} are labelled {label!r} (serials "
                                f"{', '.join(t.serial for t in hits)}); give each token its own label")
        if not hits:
            return None
        with errors.translated(token=label, action="open the token"):
            for slot in self.lib.get_slots(token_present=True):
                if slot.slot_id == hits[0].slot_id:
                    return slot.get_token()
        return None

    def _not_found(self, label: str) -> hw.TokenError:
        present = [t.label for t in self.tokens() if t.label]
        there = f"tokens there: {', '.join(repr(p) for p in present)}" if present else "it has no tokens"
        if self.is_softhsm:
            conf = self.softhsm_conf or os.environ.get("SOFTHSM2_CONF") or "/etc/softhsm/softhsm2.conf"
            what = (f"create it with 'semper token init --label {label!r}', or point SOFTHSM2_CONF (now {conf}) "
                    f"at the folder that holds it")
        else:
            what = "insert the card or token, check the reader and pcscd, or pass the right --module"
        return hw.TokenError(f"no token labelled {label!r} in {self.path} ({there}); {what}")

    def free_slot(self) -> int:
        """The slot id of SoftHSM2's spare uninitialised token (it always keeps one)."""
        for info in self.tokens():
            if not info.initialized:
                return info.slot_id
        raise hw.TokenError(f"{self.path} has no free slot for a new token")


def _load_error(path: str, conf: str | None, exc: BaseException) -> hw.TokenError:
    text = str(exc)
    if "loading" in text or "symbol" in text:
        return hw.TokenError(f"{path} could not be loaded as a PKCS#11 module ({text.strip()}); "
                             f"pass the path of a PKCS#11 library, e.g. {DEFAULT_MODULE}")
    conf = conf or os.environ.get("SOFTHSM2_CONF")
    hint = (f"; for SoftHSM2 check that SOFTHSM2_CONF ({conf}) exists and its directories.tokendir exists"
            if "softhsm" in path.lower() or conf else "")
    return hw.TokenError(f"the PKCS#11 module {path} failed to start ({type(exc).__name__}: {text}){hint}")


_MODULES: dict[str, Module] = {}


def load(path: str | os.PathLike[str] | None = None, *, softhsm_conf: str | os.PathLike[str] | None = None) -> Module:
    """The module at ``path`` (default SoftHSM2), initialised; one ``Module`` per path per process.

    ``softhsm_conf`` (SoftHSM2 only) selects the token folder; None means whatever SOFTHSM2_CONF says
    now. A change of either re-initialises the module.
    """
    p = str(path or DEFAULT_MODULE)
    if not Path(p).exists():
        raise hw.TokenError(f"no PKCS#11 module at {p}: {_INSTALL_HINT}")
    if Path(p).is_dir():
        raise hw.TokenError(f"{p} is a folder, not a PKCS#11 module; pass the path of the library (.so) file")
    conf = str(softhsm_conf) if softhsm_conf is not None else os.environ.get("SOFTHSM2_CONF")
    module = _MODULES.get(p)
    if module is None:
        module = _MODULES[p] = Module(p, conf)
    elif module.is_softhsm and conf != module.softhsm_conf:
        module.use_softhsm_conf(conf)
    elif not module.lib.initialized:
        module.reinitialize()
    return module
