"""The client side of ``semper serve bank``: signed requests, verified answers, safe retries.

Every request is a :class:`~client.payment.wire.SignedJson` whose body names the operation, its
parameters, a fresh nonce, the time and an idempotency key, signed on the sender's card or token.
The bank refuses a nonce it has seen (a replay) and answers a known idempotency key with the
answer it gave before, so a retry after a lost answer never pays twice: this client retries a
dropped connection with the *same* idempotency key and a new nonce and signature. When every try
fails, :class:`OutcomeUnknown` carries the key so the caller can ask again later.

Answers are signed by the bank's key (in its token); they are checked against the bank
certificate read from ``GET /info`` over the pinned TLS channel, so they are evidence.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from semper.hardware.signer import Signer

from ..support.channels import AnswerLost, ChannelError, JsonClient, ServiceError, TlsError, UnreachableError
from .errors import InsufficientFunds, OutcomeUnknown, PaymentRefused, ProtocolError, UntrustedService
from .wire import SignedJson, digest, sign, unb64, verify_digest

RETRIES = 3
BACKOFF_S = 0.2


class BankClient:
    """Requests to one bank, signed by ``signer``.

    ``enter_pin(purpose, signer)`` (a :data:`client.payment.module.PinEntry`, e.g. the TINGUIN's) gets
    the PIN verified on the signer right before each signature, for keys that want it every time
    (PIV 9C); the PIN itself never reaches this client.
    """

    def __init__(self, url: str, tls_root: str | bytes | Path, signer: Signer | None = None, *,
                 enter_pin: Callable[[str, Any], None] | None = None, timeout: float = 15.0,
                 retries: int = RETRIES, before_sign: Callable[[], None] | None = None) -> None:
        self.http = JsonClient(url, tls_root, timeout=timeout, name="the bank")
        self.signer = signer
        self.enter_pin = enter_pin
        self.retries = retries
        self.before_sign = before_sign
        self._info: dict[str, Any] | None = None
        self._bank_key: ec.EllipticCurvePublicKey | None = None

    def with_signer(self, signer: Signer, enter_pin: Callable[[str, Any], None] | None = None,
                    before_sign: Callable[[], None] | None = None) -> BankClient:
        other = BankClient.__new__(BankClient)
        other.__dict__.update(self.__dict__)
        other.signer, other.enter_pin, other.before_sign = signer, enter_pin, before_sign
        return other

    # ---- the bank's public data ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        if self._info is None:
            try:
                info = self.http.get("/info")
            except TlsError as e:
                raise UntrustedService(str(e)) from None
            except ChannelError as e:
                raise OutcomeUnknown(f"cannot reach the bank: {e}") from None
            cert = x509.load_der_x509_certificate(unb64(info.get("certificate"), "bank certificate"))
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ProtocolError("the bank's certificate holds no EC key")
            self._info, self._bank_key = info, key
        return self._info

    @property
    def bank_certificate(self) -> bytes:
        return unb64(self.info()["certificate"], "bank certificate")

    def verify_bank(self, signed: SignedJson) -> dict[str, Any]:
        """The body of a statement the bank signed (raises ProtocolError if it did not)."""
        self.info()
        assert self._bank_key is not None
        if signed.certificate != self.bank_certificate:
            raise ProtocolError("the statement is not signed with this bank's certificate")
        verify_digest(self._bank_key, signed.digest, signed.signature, "bank's signature")
        return signed.body

    # ---- requests ------------------------------------------------------------------------------
    def new_key(self) -> str:
        return secrets.token_hex(16)

    def envelope(self, op: str, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        if self.signer is None:
            raise ProtocolError("bank requests must be signed, and this party has no card or token key")
        body = {"op": op, "params": params, "nonce": secrets.token_hex(16), "time": int(time.time()),
                "idempotency_key": idempotency_key, "bank": self.info().get("bank_id", "")}
        if self.before_sign is not None:
            self.before_sign()
        if self.enter_pin is not None:
            self.enter_pin(f"sign your request to the bank ({op})", self.signer)
        return sign(self.signer, body, None).to_json()

    def call(self, op: str, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /<op>; returns the bank's verified answer body. Retries dropped connections."""
        return self.call_signed(op, params, idempotency_key).body

    def call_signed(self, op: str, params: dict[str, Any], idempotency_key: str | None = None) -> SignedJson:
        """As :meth:`call`, but the bank's signed answer itself (evidence to pass on)."""
        key = idempotency_key or self.new_key()
        last: Exception | None = None
        for attempt in range(self.retries):
            env = self.envelope(op, params, key)
            try:
                answer = self.http.post("/" + op, env)
            except ServiceError as e:
                raise _refusal(e) from None
            except TlsError as e:                  # not the bank the root vouches for: never retried
                raise UntrustedService(str(e)) from None
            except (UnreachableError, AnswerLost) as e:   # the same idempotency key makes a retry safe
                last = e
                time.sleep(BACKOFF_S * (attempt + 1))
                continue
            except ChannelError as e:
                raise ProtocolError(f"the bank's answer to {op} is unusable: {e}") from None
            signed = SignedJson.from_json(answer, "the bank's answer")
            body = self.verify_bank(signed)
            if body.get("request") != digest(env["body"]).hex() and body.get("idempotency_key") != key:
                raise ProtocolError("the bank's answer is for another request")
            return signed
        raise OutcomeUnknown(f"the bank did not answer {op} after {self.retries} tries ({last}); it is safe to "
                             f"retry with idempotency key {key}")

    def get(self, path: str) -> dict[str, Any]:
        try:
            return self.http.get(path)
        except ServiceError as e:
            raise _refusal(e) from None
        except TlsError as e:
            raise UntrustedService(str(e)) from None
        except ChannelError as e:
            raise OutcomeUnknown(str(e)) from None


def _refusal(e: ServiceError) -> Exception:
    if e.code == "insufficient_funds":
        return InsufficientFunds(f"the bank refused: {e.message}")
    return PaymentRefused(f"the bank refused: {e.message}", e.code, e.status)
