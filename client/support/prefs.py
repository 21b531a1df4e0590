"""The user's preferences: one TOML file, every key known and checked, errors that name the key.

Where: ``$SEMPER_CONFIG`` (a folder, or a file if it ends in ``.toml``), else
``$XDG_CONFIG_HOME/semper/prefs.toml`` (``~/.config/semper/prefs.toml``).

Why strict: a mistyped key (``servers.bnak``) silently ignored would send a payment to the
default server; so an unknown key or a bad value stops every command that reads the file, with a
message naming the key and saying what it wants. ``semper prefs set`` writes through tomlkit, so a
person's comments and layout in the file survive.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
from tomlkit.exceptions import TOMLKitError

from semper.hardware.errors import SemperError


class PrefsError(SemperError):
    """A preferences file or value is wrong; ``key`` names the key when one is to blame. The user's
    input: exit status 2."""

    exit_status = 2
    http_status = 400
    code = "bad_preference"

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def prefs_path() -> Path:
    env = os.environ.get("SEMPER_CONFIG")
    if env:
        p = Path(env)
        return p if p.suffix == ".toml" else p / "prefs.toml"
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "semper" / "prefs.toml"


# ---- validators: each returns the value to store or raises ValueError with what it wants ----------
def _https_url(text: str) -> str:
    parts = urlsplit(text)
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("an https:// URL with a host, e.g. https://127.0.0.1:8443 (semper services speak only HTTPS)")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("a plain https://host:port URL, without user, query or fragment")
    return text.rstrip("/")


def _module_name(text: str) -> str:
    """A payment module's name as 'semper payment modules' lists it (card-purse, setpay, cheque, ecash);
    whether it is installed is checked where it is used (semper buy), since modules come and go."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", text):
        raise ValueError("a payment module name as 'semper payment modules' lists it (lower-case), e.g. card-purse")
    return text.replace("_", "-")


def _account(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", text):
        raise ValueError("an account id as the bank gave it, e.g. A1B2C3D4E5F60718")
    return text


def _signer_kind(text: str) -> str:
    if text not in ("card", "token"):
        raise ValueError("'card' (the PIV card in a reader) or 'token' (a PKCS#11 token)")
    return text


def _token_label(text: str) -> str:
    raw = text.encode()
    if not 1 <= len(raw) <= 32 or text != text.strip():
        raise ValueError("a token label of 1 to 32 bytes without leading or trailing blanks")
    return text


def _reader(text: str) -> str:
    if not text.strip() or len(text) > 128 or not text.isprintable():
        raise ValueError("a PC/SC reader name as 'semper readers' lists it")
    return text


def _phrase(text: str) -> str:
    if not 4 <= len(text) <= 64:
        raise ValueError("4 to 64 characters")
    if not text.isprintable() or "\x1b" in text:
        raise ValueError("printable characters only (no control or escape characters)")
    return text


def _path(text: str) -> str:
    if not text or "\x00" in text:
        raise ValueError("a file path")
    return str(Path(text).expanduser())


@dataclass(frozen=True)
class Key:
    name: str
    check: Callable[[str], str]
    help: str


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("servers.ca", _https_url, "the certification authority, e.g. https://127.0.0.1:8443"),
    Key("servers.bank", _https_url, "the bank / purse issuer / acquirer"),
    Key("servers.ttp", _https_url, "the third party (arbiter, time-stamps)"),
    Key("servers.shop", _https_url, "the shop 'semper buy' uses when no shop URL is given"),
    Key("trust.ca_root", _path, "the semper CA root certificate (PEM) that clients pin"),
    Key("trust.bank_tls_root", _path, "the bank service's TLS root (PEM) that clients pin"),
    Key("trust.purse_root", _path, "the card purse scheme's root (PEM), to check purse payments in fair exchanges"),
    Key("trust.certifiers", _path, "the service certifiers you trust: their certificates (PEM, one or more), "
                                   "for services downloaded from shops (docs/commerce.md, 'Services')"),
    Key("trust.phrase", _phrase, "your personal phrase, shown in the TINGUIN's frame so you can tell it is real"),
    Key("payment.default_module", _module_name, "the payment module 'semper buy' prefers when --pay is not given"),
    Key("payment.account", _account, "your account at the bank (loads, e-cash, cheques, account payments)"),
    Key("signer.kind", _signer_kind, "what signs for you: card or token"),
    Key("signer.reader", _reader, "the PC/SC reader of your card (default: search)"),
    Key("signer.token", _token_label, "the label of your PKCS#11 token"),
)}


def _decision(text: str) -> str:
    if text not in ("allow", "refuse"):
        raise ValueError("'allow' or 'refuse' (your decision on a downloaded service)")
    return text


#: keys made from a name: the decision on a downloaded service, by its certificate's serial
SERVICE_DECISION = re.compile(r"^services\.[0-9a-f]{32}$")
DECISION_KEY = Key("services.<certificate serial>", _decision,
                   "your decision on a downloaded service (allow or refuse), kept when the TINGUIN asked")


def _key(key: str) -> Key | None:
    return KEYS.get(key) or (DECISION_KEY if SERVICE_DECISION.match(key) else None)


def service_key(serial: str) -> str:
    """The preference holding the decision on the service certified by ``serial``."""
    return f"services.{serial.lower()}"


def _unknown(key: str) -> PrefsError:
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(KEYS)}"
    return PrefsError(f"unknown preference {key!r}{hint}", key)


def _flatten(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            if section in {k.split(".")[0] for k in KEYS} | {"services"}:
                raise PrefsError(f"{where}: {section!r} must be a table ([{section}])", section)
            raise _unknown(section)
        for name, value in table.items():
            key = f"{section}.{name}"
            if isinstance(value, dict):
                raise _unknown(f"{key}.{next(iter(value), '')}".rstrip("."))
            flat[key] = value
    return flat


@dataclass(frozen=True)
class Prefs:
    """The checked preferences; a key not set is absent from ``values``."""

    values: dict[str, str]
    path: Path

    def get(self, key: str, default: str | None = None) -> str | None:
        if _key(key) is None:
            raise _unknown(key)
        return self.values.get(key, default)


def _validate(key: str, value: Any, where: str) -> str:
    known = _key(key)
    if known is None:
        raise _unknown(key)
    if not isinstance(value, str):
        raise PrefsError(f"{where}: {key} must be a string ({known.help})", key)
    try:
        return known.check(value)
    except ValueError as e:
        raise PrefsError(f"{where}: bad value for {key}: {e}", key) from None


def _read(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, UnicodeDecodeError) as e:
        raise PrefsError(f"cannot read the preferences {path}: {e}") from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as e:
        raise PrefsError(f"{path} is not valid TOML: {e}") from None


def load(path: Path | None = None) -> Prefs:
    """Read and check the whole file (a missing file is empty preferences)."""
    path = path or prefs_path()
    doc = _read(path)
    flat = _flatten(doc.unwrap(), path)
    return Prefs({k: _validate(k, v, str(path)) for k, v in flat.items()}, path)


def set_value(key: str, value: str, path: Path | None = None) -> Prefs:
    """Check one value and write it, keeping the rest of the file (and its comments) as it was."""
    path = path or prefs_path()
    load(path)                                      # refuse to build on a broken file
    checked = _validate(key, value, "value")
    doc = _read(path)
    section, name = key.split(".", 1)
    if section not in doc:
        doc[section] = tomlkit.table()
    doc[section][name] = checked
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)
    return load(path)


def unset(key: str, path: Path | None = None) -> Prefs:
    path = path or prefs_path()
    if _key(key) is None:
        raise _unknown(key)
    doc = _read(path)
    section, name = key.split(".", 1)
    table = doc.get(section)
    if isinstance(table, dict) and name in table:
        del table[name]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)
    return load(path)
