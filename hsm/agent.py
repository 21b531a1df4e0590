"""A PKCS#11 token held open in a process of its own (``python -m semper.hsm.agent``), used like a signer.

Why a process: a PKCS#11 library is loaded once per process, and SoftHSM2 serves the one token
folder ``SOFTHSM2_CONF`` named at C_Initialize; opening a token in another folder re-initialises
the module and ends every login in the process (``hsm.module``). Some keys belong to a party other
than the one whose tokens the process already has open: the purse scheme's root and issuer keys
are the scheme operator's, while the same process (``semper bank init``, the demo, the tests)
holds the bank's or a shop's token. Such a token is opened by an agent: its login cannot end the
others', theirs cannot end its own, and the process holding that login holds nothing else.

The parent sends a digest and gets a DER signature back, as from a card; no private key crosses
the pipe (the token could not give one out anyway). Both ends are this module, run by the same
user, talking over a socket pair with ``multiprocessing.connection`` (pickled tuples). The PIN
goes over that socket, never on a command line or in the environment. The agent ends when asked,
when the parent closes its end (the parent exited or dropped the agent), or is killed by the
parent when it stops answering.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from semper.hardware import errors as hw
from semper.hardware.signer import PinStatus

TIMEOUT = 120.0                  # a busy shared machine can take seconds to make a SoftHSM2 token

# what an agent can be asked; everything else is refused
_OPS = ("provision", "open", "generate", "sign", "login")


# ---- the parent's side ---------------------------------------------------------------------------
class TokenAgent:
    """One agent process and the token it holds open (after ``open`` or ``provision``)."""

    def __init__(self, *, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "semper.hsm.agent", str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            ours.close()
            raise hw.TokenError(f"could not start the token process ({e.strerror or e})") from None
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._finalizer = weakref.finalize(self, _stop, self._conn, self._proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Ask the agent; its answer, or its error raised here as the same kind of exception."""
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            if self._conn.closed:
                raise hw.TokenError("the token process was closed; open the token again")
            try:
                self._conn.send((op, *args))
                if not self._conn.poll(wait):
                    self.close()
                    raise hw.TokenError(f"the token process gave no answer within {wait:.0f} s to {op!r}; it was "
                                        f"stopped (is the machine overloaded, or the token's module hanging?)")
                status, *value = self._conn.recv()
            except (EOFError, OSError):
                code = self._reap()
                raise hw.TokenError(f"the token process ended unexpectedly (exit status {code}) while asked to "
                                    f"{op}; its error output above says why") from None
        if status == "ok":
            return value[0]
        raise _rebuild(*value)

    def close(self) -> None:
        self._finalizer()

    def _reap(self) -> int | None:
        self._conn.close()
        try:
            return self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait(timeout=10)

    def __enter__(self) -> TokenAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(conn: Connection, proc: subprocess.Popen[bytes]) -> None:
    """Ask the agent to end (it logs out by closing its sessions), and make sure it did."""
    try:
        if not conn.closed:
            conn.send(("close",))
            conn.poll(10)
    except (OSError, EOFError):
        pass
    finally:
        conn.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class AgentKey:
    """One key of an agent's token, as a signer: the agent holds the login, the key never moves."""

    def __init__(self, agent: TokenAgent, key_id: bytes, point: bytes, label: str,
                 certificate: bytes | None = None) -> None:
        self.agent = agent
        self.key_id = key_id
        self.point = point
        self.label = label
        self._certificate = certificate

    def certificate(self) -> bytes:
        if self._certificate is None:
            raise hw.NotFoundError(f"no certificate is known for key {self.label!r}")
        return self._certificate

    def public_point(self) -> bytes:
        return self.point

    def pin_status(self) -> PinStatus:
        return PinStatus(True, None)                          # the agent logged in when it opened the token

    def verify_pin(self, pin: bytes) -> None:
        self.agent.call("login", bytes(pin))

    def sign_digest(self, digest: bytes) -> bytes:
        return bytes(self.agent.call("sign", self.key_id, bytes(digest)))


_KINDS: dict[str, type[hw.HardwareError]] = {
    "wrong_pin": hw.WrongPinError, "pin_blocked": hw.PinBlockedError, "pin_required": hw.PinRequiredError,
    "not_found": hw.NotFoundError, "invalid_input": hw.InvalidInputError, "removed": hw.CardRemovedError,
}


def _kind(e: BaseException) -> str:
    for kind, cls in _KINDS.items():
        if isinstance(e, cls):
            return kind
    return "token"


def _rebuild(kind: str, message: str) -> hw.HardwareError:
    """The agent's error as the parent raises it: the same class of the hardware hierarchy, its words."""
    cls = _KINDS.get(kind, hw.TokenError)
    if issubclass(cls, hw.CardError):
        err = cls.__new__(cls)                   # not cls(...): WrongPinError's own __init__ would word it anew
        hw.CardError.__init__(err, message)
        if isinstance(err, hw.WrongPinError):
            err.tries_left = None
        return err
    return cls(message)


# ---- the agent's side ----------------------------------------------------------------------------
class _Holder:
    """What the agent process keeps: the module, the token label, one signer per key, logged in."""

    def __init__(self) -> None:
        self.module: Any = None
        self.label = ""
        self.signers: dict[bytes, Any] = {}

    def provision(self, conf: str, label: str, pin: bytes, so_pin: bytes, key_labels: list[str]
                  ) -> list[tuple[str, bytes, bytes]]:
        """Make a SoftHSM2 token in the store of ``conf`` with one key per label; then open it."""
        from .softhsm import SoftHsmStore, generate_key, provision
        store = SoftHsmStore.from_conf(Path(conf))
        made = provision(store, label, pin, so_pin, key_label=key_labels[0])
        for key_label in key_labels[1:]:
            generate_key(store.module(), label, pin, key_label)
        return self.open(made.module, conf, label, pin)

    def open(self, module: str | None, conf: str | None, label: str, pin: bytes) -> list[tuple[str, bytes, bytes]]:
        """Open the token, log in once, keep a signer per EC key; returns (key label, CKA_ID, point) each."""
        from .module import load
        from .signer import Pkcs11Signer, ec_keys
        self.close()
        self.module, self.label = load(module, softhsm_conf=conf), label
        keys = ec_keys(self.module, label)
        self.signers = {kid: Pkcs11Signer(self.module, label, kid) for _name, kid, _point in keys}
        if self.signers:
            next(iter(self.signers.values())).verify_pin(pin)   # one login serves every session of the token
        return keys

    def generate(self, pin: bytes, key_label: str) -> tuple[bytes, bytes]:
        """One more key on the open token (how an existing token given to the scheme gets its keys)."""
        from .softhsm import generate_key
        if self.module is None:
            raise hw.TokenError("no token is open in the token process")
        module, label = self.module, self.label
        self.close()                                             # generating logs in on a session of its own
        key_id, point = generate_key(module, label, pin, key_label)
        self.open(module.path, module.softhsm_conf, label, pin)
        return key_id, point

    def login(self, pin: bytes) -> None:
        if not self.signers:
            raise hw.NotFoundError(f"token {self.label!r} holds no EC key")
        next(iter(self.signers.values())).verify_pin(pin)

    def sign(self, key_id: bytes, digest: bytes) -> bytes:
        signer = self.signers.get(key_id)
        if signer is None:
            raise hw.NotFoundError(f"token {self.label!r} has no key with id {key_id.hex()}")
        return bytes(signer.sign_digest(digest))

    def close(self) -> None:
        for s in self.signers.values():
            s.close()
        self.signers = {}


def serve(conn: Connection) -> None:
    """Answer the parent until it says ``close`` or goes away."""
    holder = _Holder()
    try:
        while True:
            try:
                op, *args = conn.recv()
            except (EOFError, OSError):
                return
            if op == "close":
                holder.close()
                conn.send(("ok", None))
                return
            try:
                if op not in _OPS:
                    raise hw.TokenError(f"the token process does not know {op!r}")
                result = getattr(holder, op)(*args)
            except hw.HardwareError as e:
                conn.send(("error", _kind(e), str(e)))
            except Exception as e:  # an answer in words rather than a dead process
                conn.send(("error", "token", f"the token process failed: {type(e).__name__}: {e}"))
            else:
                conn.send(("ok", result))
    finally:
        holder.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
