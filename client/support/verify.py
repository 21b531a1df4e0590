"""Whether a signed statement counts as evidence: intact, its signer trusted for the time that counts.

Kept apart from ``trust`` (which certificates count) and ``tsa`` (time-stamps, which builds on
``trust``): verifying a statement needs both, and neither needs it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .cms import BadTimestamp, Statement, check_integrity, parse_statement
from .trust import CLOCK_SKEW, Revocation, TrustStore, Usage, as_utc
from .tsa import TimeStampInfo, verify_statement_timestamps


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement that passed every check, with what the checks relied on."""

    statement: Statement
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    checked_at: dt.datetime                      # the time the chain was validated for
    revocation: Revocation
    timestamp: TimeStampInfo | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def body(self) -> dict[str, Any]:
        return self.statement.body

    @property
    def type(self) -> str:
        return self.statement.type

    @property
    def signing_time(self) -> dt.datetime:
        return self.statement.signing_time

    @property
    def signer_name(self) -> str:
        return self.signer.subject.rfc4514_string()

    @property
    def signer_der(self) -> bytes:
        return self.signer.public_bytes(Encoding.DER)


def verify_statement(der: bytes, trust: TrustStore, at: dt.datetime | None = None,
                     require_non_repudiation: bool = True) -> VerifiedStatement:
    """Everything a verifier must check before a statement counts as evidence.

    Order matters for the messages: a damaged or forged statement is reported as such before any
    question about its signer. ``at`` overrides the time the certificates are checked for (default:
    the trusted time-stamp's time, else the claimed signing time).
    """
    statement = parse_statement(der)
    check_integrity(statement.parts)
    stamp = verify_statement_timestamps(statement, trust)
    notes: list[str] = []
    if stamp is not None and as_utc(statement.signing_time) > stamp.gen_time + CLOCK_SKEW:
        raise BadTimestamp(f"the statement claims to be signed at {statement.signing_time:%Y-%m-%d %H:%M:%S} UTC, "
                           f"after its time-stamp ({stamp.gen_time:%Y-%m-%d %H:%M:%S} UTC): its signing time is false")
    when = as_utc(at) if at is not None else (stamp.gen_time if stamp is not None else as_utc(statement.signing_time))
    usage = Usage.STATEMENT if require_non_repudiation else Usage.SIGNATURE
    chain, revocation = trust.check_certificate(statement.signer_cert, statement.certificates, when, usage,
                                                proven_time=stamp.gen_time if stamp is not None else None)
    if not revocation.checked:
        notes.append("revocation not checked for " + "; ".join(revocation.unchecked) + " (no CRL from its issuer)")
    notes.extend(revocation.revoked_later)
    if stamp is not None and not stamp.revocation_checked:
        notes.append(f"revocation not checked for the time-stamping authority '{stamp.tsa_name}' (no CRL)")
    return VerifiedStatement(statement, statement.signer_cert, tuple(chain), when, revocation, stamp, tuple(notes))
