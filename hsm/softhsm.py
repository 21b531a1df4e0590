"""SoftHSM2 tokens in a folder of their own: configuration, creation, key generation.

A folder holds ``softhsm2.conf`` and ``tokens/``; pointing ``SOFTHSM2_CONF`` at that file is all
another program (``pkcs11-tool``, ``softhsm2-util``, a second semper) needs to see the tokens. The
system-wide ``/etc/softhsm/softhsm2.conf`` is never touched, so tests and users do not share
tokens by accident.

The key pair is generated on the token (CKM_EC_KEY_PAIR_GEN, P-256); the private key is sensitive
and not extractable, so nothing but the token ever holds it. The SO PIN goes to C_InitToken through
the module's function list, never on a command line where the process table would show it. If a
step after C_InitToken fails, the half-made token is deleted again.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11.util.ec import encode_named_curve_parameters

from semper.hardware import errors as hw

from . import errors
from .module import DEFAULT_MODULE, Module, load
from .signer import ec_point, key_id_for

CONF_NAME = "softhsm2.conf"
PIN_MIN, PIN_MAX = 4, 255                  # SoftHSM2's limits for user and SO PIN
KEY_LABEL = "semper signature key"
_CONF_TEMPLATE = """\
# SoftHSM2 configuration written by semper: the tokens of this folder only.
# Use it with: SOFTHSM2_CONF={conf} pkcs11-tool --module {module} -L
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
"""


@dataclass(frozen=True)
class SoftHsmStore:
    """A SoftHSM2 configuration file and the token folder it names."""

    conf: Path
    token_dir: Path

    @classmethod
    def in_folder(cls, folder: Path) -> SoftHsmStore:
        """``folder/softhsm2.conf`` (written when missing, tokens in ``folder/tokens``)."""
        folder = Path(folder).absolute()
        conf = folder / CONF_NAME
        if conf.exists():
            return cls.from_conf(conf)
        token_dir = folder / "tokens"
        token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf.write_text(_CONF_TEMPLATE.format(conf=conf, module=DEFAULT_MODULE, tokendir=token_dir))
        return cls(conf, token_dir)

    @classmethod
    def own_folder(cls, folder: Path) -> SoftHsmStore:
        """The store semper keeps wholly inside ``folder`` (made when missing), wherever it was made.

        A copied or moved folder still holds a configuration naming the old token folder; it is
        pointed at this folder's own ``tokens/`` again, so a copy never reads or changes the tokens
        of the original.
        """
        folder = Path(folder).absolute()
        conf, token_dir = folder / CONF_NAME, folder / "tokens"
        if not conf.exists():
            return cls.in_folder(folder)
        m = re.search(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", conf.read_text(), re.MULTILINE)
        if token_dir.is_dir() and (m is None or Path(m.group(1)) != token_dir):
            conf.write_text(_CONF_TEMPLATE.format(conf=conf, module=DEFAULT_MODULE, tokendir=token_dir))
        return cls.from_conf(conf)

    @classmethod
    def from_conf(cls, conf: Path) -> SoftHsmStore:
        """An existing configuration (e.g. the one SOFTHSM2_CONF names); its token folder must exist."""
        conf = Path(conf).absolute()
        try:
            text = conf.read_text()
        except OSError as e:
            raise hw.TokenError(f"cannot read the SoftHSM2 configuration {conf} ({e.strerror}); fix SOFTHSM2_CONF "
                                f"or pass --dir FOLDER to use a folder of semper's own") from None
        m = re.search(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", text, re.MULTILINE)
        if not m:
            raise hw.TokenError(f"{conf} names no token folder (directories.tokendir = ...); add one")
        token_dir = Path(m.group(1))
        if not token_dir.is_dir():
            raise hw.TokenError(f"the token folder {token_dir} named in {conf} does not exist; create it "
                                f"(mkdir -p {token_dir}) or fix the configuration")
        return cls(conf, token_dir)

    def module(self, path: str | os.PathLike[str] | None = None) -> Module:
        return load(path, softhsm_conf=self.conf)

    def env(self) -> dict[str, str]:
        """The environment for another program (pkcs11-tool, softhsm2-util) to see these tokens."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


@dataclass(frozen=True)
class ProvisionedToken:
    label: str
    serial: str
    key_id: bytes
    public_point: bytes
    store: SoftHsmStore
    module: str


def check_label(label: str) -> None:
    raw = label.encode("utf-8")
    if not 1 <= len(raw) <= 32 or label != label.strip():
        raise hw.InvalidInputError("a token label has 1 to 32 bytes (UTF-8) without leading or trailing blanks")


def check_pin(pin: bytes, what: str = "PIN") -> None:
    if not PIN_MIN <= len(pin) <= PIN_MAX:
        raise hw.InvalidInputError(f"the {what} must have {PIN_MIN} to {PIN_MAX} characters")
    try:
        pin.decode("utf-8")
    except UnicodeDecodeError:
        raise hw.InvalidInputError(f"the {what} must be UTF-8 text") from None


def provision(store: SoftHsmStore, label: str, user_pin: bytes, so_pin: bytes, *,
              module: str | os.PathLike[str] | None = None, key_label: str = KEY_LABEL) -> ProvisionedToken:
    """Create the token ``label`` in ``store`` with both PINs and an EC P-256 key pair made on it."""
    check_label(label)
    check_pin(user_pin, "user PIN")
    check_pin(so_pin, "SO PIN")
    mod = store.module(module)
    if not mod.is_softhsm:
        raise hw.TokenError(f"{mod.path} is not SoftHSM2; semper creates tokens only in SoftHSM2 (a card gets its "
                            f"keys at personalisation)")
    mod.reinitialize()                                   # see tokens other processes made in this folder
    if any(t.label == label for t in mod.tokens()):
        raise hw.TokenError(f"a token labelled {label!r} already exists in {store.token_dir}; choose another label "
                            f"or delete it (SOFTHSM2_CONF={store.conf} softhsm2-util --delete-token --token {label!r})")
    rv = mod.raw.init_token(mod.free_slot(), so_pin, label)
    if rv != 0:
        raise errors.from_rv(rv, token=label, action="initialise the token")
    serial = next(t.serial for t in mod.tokens() if t.label == label)
    try:
        token = mod.token(label)
        with errors.translated(token=label, action="set the user PIN"):
            with token.open(rw=True, so_pin=so_pin.decode("utf-8")) as so:
                so.init_pin(user_pin.decode("utf-8"))
        key_id, point = generate_key(mod, label, user_pin, key_label)
    except BaseException as first:
        try:
            delete_token(store, serial, module=mod)
        except (hw.HardwareError, OSError, subprocess.TimeoutExpired) as cleanup:
            first.add_note(f"the half-made token {serial} could not be deleted: {cleanup}")
        raise
    return ProvisionedToken(label, serial, key_id, point, store, mod.path)


def generate_key(module: Module, label: str, user_pin: bytes, key_label: str = KEY_LABEL) -> tuple[bytes, bytes]:
    """One more EC P-256 key pair made on the token ``label``; returns (CKA_ID, public point).

    The private key is sensitive and not extractable: the token signs with it and never gives it
    out. Works on any module that makes EC keys, not only SoftHSM2.
    """
    token = module.token(label)
    with errors.translated(token=label, action="generate the key pair"):
        with token.open(rw=True, user_pin=user_pin.decode("utf-8")) as session:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            pub, priv = params.generate_keypair(
                store=True, label=key_label, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True},
                private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
                                  Attribute.DERIVE: False, Attribute.DECRYPT: False})
            point = ec_point(pub[Attribute.EC_POINT])
            key_id = key_id_for(point)
            pub[Attribute.ID] = key_id
            priv[Attribute.ID] = key_id
    return key_id, point


def delete_token(store: SoftHsmStore, serial: str, *, module: Module | None = None, timeout: float = 30.0) -> None:
    """Remove a token by serial (softhsm2-util), then let the module forget it."""
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise hw.TokenError("softhsm2-util is missing; install the Debian package softhsm2")
    r = subprocess.run([tool, "--delete-token", "--serial", serial], env=store.env(), check=False, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if module is not None:
        module.reinitialize()
    if r.returncode != 0:
        raise hw.TokenError(f"could not delete token {serial} from {store.token_dir}: {r.stderr.strip()}")
