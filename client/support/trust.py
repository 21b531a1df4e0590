"""The verifier's side of the trust model: which signers' statements count as evidence.

The semper CA root certifies the parties' card and token keys (and may certify intermediate CAs);
a statement is evidence when its signer's certificate chains to a root the verifier chose, was valid
when the statement was signed, is not on its CA's revocation list, and was issued for
non-repudiation. Chain building uses ``cryptography.x509.verification`` (RFC 5280 path validation
with the Web PKI profile for CA certificates); what that profile does not decide (key usage for
evidence, CRLs, time-stamping certificates) is checked here, each with its own error.

Which time counts: the time proven by a trusted RFC 3161 time-stamp on the signature if there is
one, else the signing time the signer claims. A revoked certificate is refused unless a trusted
time-stamp proves the signature existed before the revocation: a claimed signing time can be
back-dated by whoever holds a stolen key, a time-stamp cannot.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from .cms import (
    BadSignature,
    BadTimestamp,
    EvidenceError,
    ExpiredSigner,
    MalformedStatement,
    RevokedSigner,
    UntrustedSigner,
    WrongKeyUsage,
)
from .small_cache import MAX_BYTES

__all__ = [
    "BadSignature",
    "BadTimestamp",
    "EvidenceError",
    "ExpiredSigner",
    "MalformedStatement",
    "Revocation",
    "RevokedSigner",
    "TrustStore",
    "UntrustedSigner",
    "Usage",
    "WrongKeyUsage",
    "describe",
]

#: a signer's clock may run ahead of the TSA's by this much before its claimed time is called false
CLOCK_SKEW = dt.timedelta(minutes=5)
CHAIN_CACHE = 256                   # paths remembered per trust store (a party sees few signers)
USAGE_CACHE = 1024                  # certificates whose usage passed, remembered (TrustStore.check_usage)

_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
                   ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.CERTIFICATE_POLICIES,
                   ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.POLICY_CONSTRAINTS}


class Usage(enum.Enum):
    """What a certificate is being relied on for; each has its own key-usage rule."""

    STATEMENT = "signed statement (non-repudiation)"
    SIGNATURE = "signature without non-repudiation"
    TIMESTAMPING = "time-stamping"


def describe(cert: x509.Certificate) -> str:
    """How a person recognises a certificate: its subject and serial number (worded once per
    certificate: the same few signers are described in every verification's notes). A certificate over
    ``small_cache.MAX_BYTES`` is worded each time and not kept: refused certificates are described too, and
    512 kept certificates of 16 MiB (the third party's request limit) were 8 GiB (review of 2026-12-07)."""
    if len(cert.tbs_certificate_bytes) <= MAX_BYTES:
        return _described(cert)
    return _wording(cert)


def _wording(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string()}' (serial {cert.serial_number:X})"


_described = functools.lru_cache(maxsize=512)(_wording)


def as_utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _load_certs(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise EvidenceError(f"{source} holds no readable X.509 certificate ({e}); pass the CA root as PEM or "
                            "DER") from None


def _load_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        raise EvidenceError(f"{source} is not a readable CRL ({e}); fetch the CA's CRL again") from None


@dataclass(frozen=True)
class _Path:
    """A certificate's path to a root, remembered, and when all of it is valid."""

    chain: tuple[x509.Certificate, ...]
    valid_from: dt.datetime
    valid_until: dt.datetime


@dataclass(frozen=True)
class Revocation:
    """The revocation status found for one chain: ``checked`` is False when no CRL covered a certificate."""

    checked: bool
    crl_dates: tuple[dt.datetime, ...] = ()           # thisUpdate of each CRL consulted
    revoked_later: tuple[str, ...] = ()               # revoked, but after the proven signing time
    unchecked: tuple[str, ...] = ()                   # certificates no CRL covered


class TrustStore:
    """The roots a verifier trusts and the CRLs it has; nothing in a statement can add a root.

    ``require_crl``: refuse a chain when some certificate's issuer has no CRL here, rather than
    reporting the revocation status as unchecked.
    """

    def __init__(self, roots: Iterable[x509.Certificate | bytes],
                 crls: Iterable[x509.CertificateRevocationList | bytes] = (), *,
                 intermediates: Iterable[x509.Certificate | bytes] = (), require_crl: bool = False) -> None:
        self.roots = tuple(self._cert(c) for c in roots)
        if not self.roots:
            raise EvidenceError("a trust store needs at least one CA root certificate")
        for root in self.roots:
            try:
                root.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature) as e:
                raise EvidenceError(f"{describe(root)} is not a self-signed root certificate ({e})") from None
        self.intermediates = tuple(self._cert(c) for c in intermediates)
        self.crls = tuple(c if isinstance(c, x509.CertificateRevocationList) else _load_crl(c, "a CRL") for c in crls)
        self.require_crl = require_crl
        self._chains: dict[tuple[x509.Certificate, tuple[x509.Certificate, ...]], _Path] = {}
        self._chains_lock = threading.Lock()
        # the revocation status found for a chain without a proven time (check_revocation): it depends on the
        # chain, the CRLs here and require_crl alone, and is kept for those CRLs (by identity: with_crls makes
        # another store, and CRLs or the rule set on this one start the memo again)
        self._revocations: dict[tuple[x509.Certificate, ...], Revocation] = {}
        self._revocations_of: tuple[tuple[x509.CertificateRevocationList, ...], bool] = (self.crls, require_crl)

    @staticmethod
    def _cert(c: x509.Certificate | bytes) -> x509.Certificate:
        return c if isinstance(c, x509.Certificate) else _load_certs(c, "a certificate")[0]

    @classmethod
    def from_files(cls, ca: Sequence[Path] | Path, crls: Sequence[Path] = (), *, require_crl: bool = False
                   ) -> TrustStore:
        """Roots from PEM (several per file allowed) or DER files; CRLs likewise."""
        ca_files = [ca] if isinstance(ca, Path) else list(ca)
        roots: list[x509.Certificate] = []
        for path in ca_files:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise EvidenceError(f"cannot read the CA file {path}: {e.strerror}") from None
            roots.extend(_load_certs(data, str(path)))
        loaded = []
        for path in crls:
            try:
                loaded.append(_load_crl(path.read_bytes(), str(path)))
            except OSError as e:
                raise EvidenceError(f"cannot read the CRL file {path}: {e.strerror}") from None
        return cls(roots, loaded, require_crl=require_crl)

    def with_crls(self, crls: Iterable[x509.CertificateRevocationList | bytes]) -> TrustStore:
        """The same roots with more CRLs (e.g. those shipped in an evidence bundle: CRLs are signed by
        their CA, so where they come from does not matter; roots always come from the verifier)."""
        return TrustStore(self.roots, list(self.crls) + list(crls), intermediates=self.intermediates,
                          require_crl=self.require_crl)

    # ---- chain ----------------------------------------------------------------------------------
    def chain(self, cert: x509.Certificate, untrusted: Sequence[x509.Certificate], at: dt.datetime
              ) -> list[x509.Certificate]:
        """Path from ``cert`` to one of the roots, valid at ``at``; UntrustedSigner otherwise."""
        at = as_utc(at)
        key = (cert, tuple(untrusted))
        known = self._chains.get(key)
        # A path found once stays a path: only the validity windows depend on the time asked about (the
        # path's common window, worked out once: the same signers come with every statement)
        if known is not None and known.valid_from <= at <= known.valid_until:
            return list(known.chain)
        chain = self._build_chain(cert, untrusted, at)
        # remembered only for certificates of a real size: the statement's sender chose ``untrusted`` (a valid
        # signer could pad its statements with megabytes of extra certificates, kept per entry; review of
        # 2026-12-07)
        if sum(len(c.tbs_certificate_bytes) for c in (cert, *untrusted)) <= MAX_BYTES:
            with self._chains_lock:
                if len(self._chains) >= CHAIN_CACHE:
                    self._chains.pop(next(iter(self._chains)))
                self._chains[key] = _Path(tuple(chain), max(c.not_valid_before_utc for c in chain),
                                          min(c.not_valid_after_utc for c in chain))
        return list(chain)

    def _build_chain(self, cert: x509.Certificate, untrusted: Sequence[x509.Certificate], at: dt.datetime
                     ) -> list[x509.Certificate]:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ExpiredSigner(f"the certificate {describe(cert)} was not valid at {at:%Y-%m-%d %H:%M:%S} UTC "
                                f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                                f"{cert.not_valid_after_utc:%Y-%m-%d})")
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _KNOWN_CRITICAL:
                raise UntrustedSigner(f"the certificate {describe(cert)} has a critical extension semper does not "
                                      f"understand ({ext.oid.dotted_string}); it cannot be relied on")
        builder = (verification.PolicyBuilder().store(verification.Store(list(self.roots))).time(at)
                   .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                       ee_policy=verification.ExtensionPolicy.permit_all()))
        pool = [c for c in list(untrusted) + list(self.intermediates) if c != cert]
        try:
            return list(builder.build_client_verifier().verify(cert, pool).chain)
        except verification.VerificationError as e:
            raise UntrustedSigner(f"the certificate {describe(cert)} (issued by "
                                  f"'{cert.issuer.rfc4514_string()}') does not chain to a trusted root at "
                                  f"{at:%Y-%m-%d %H:%M:%S} UTC: {e}. Pass the right CA root, or do not rely on "
                                  "this signer") from None

    # ---- key usage ------------------------------------------------------------------------------
    @staticmethod
    def check_usage(cert: x509.Certificate, usage: Usage) -> None:
        """Refuse a certificate used outside the purpose its CA issued it for.

        A certificate that passed for a usage passes again (the verdict depends on the certificate's
        bytes alone), so passes are remembered (an LRU cache keeps what returned; a refusal raises, and
        is not kept): the same few signers come with every statement."""
        TrustStore._check_usage(cert, usage)

    @staticmethod
    @functools.lru_cache(maxsize=USAGE_CACHE)
    def _check_usage(cert: x509.Certificate, usage: Usage) -> None:
        try:
            ku: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        try:
            eku_ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
            eku: list[x509.ObjectIdentifier] | None = list(eku_ext.value)
            eku_critical = eku_ext.critical
        except x509.ExtensionNotFound:
            eku, eku_critical = None, False
        who = describe(cert)
        if usage is Usage.TIMESTAMPING:
            if eku != [ExtendedKeyUsageOID.TIME_STAMPING] or not eku_critical:
                raise WrongKeyUsage(f"{who} is not a time-stamping certificate: RFC 3161 requires a critical "
                                    "extended key usage of exactly id-kp-timeStamping")
            if ku is not None and not (ku.digital_signature or ku.content_commitment):
                raise WrongKeyUsage(f"{who} may not sign: its key usage lacks digitalSignature")
            return
        if ku is None:
            raise WrongKeyUsage(f"{who} has no key usage extension; evidence needs a certificate that says "
                                "digitalSignature and nonRepudiation")
        missing = [name for name, ok in (("digitalSignature", ku.digital_signature),
                                         ("nonRepudiation", ku.content_commitment or usage is Usage.SIGNATURE))
                   if not ok]
        if missing:
            raise WrongKeyUsage(f"{who} is not issued for {' and '.join(missing)}, so it cannot sign evidence; "
                                "sign statements with the signature key (PIV slot 9C or the token's signing key)")
        if eku is not None and (ExtendedKeyUsageOID.TIME_STAMPING in eku or ExtendedKeyUsageOID.OCSP_SIGNING in eku):
            raise WrongKeyUsage(f"{who} is a time-stamping/OCSP certificate; such keys sign only time-stamps "
                                "or OCSP answers, never statements")

    # ---- revocation -----------------------------------------------------------------------------
    def _crls_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """Every CRL here from ``cert``'s issuer, each checked against the issuer's key."""
        found = []
        for crl in self.crls:
            if crl.issuer != cert.issuer:
                continue
            key = issuer.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or not crl.is_signature_valid(key):
                raise UntrustedSigner(f"the CRL claiming to come from '{crl.issuer.rfc4514_string()}' "
                                      f"(issued {crl.last_update_utc:%Y-%m-%d %H:%M}) has an invalid signature; "
                                      "fetch the CA's CRL again")
            found.append(crl)
        return found

    def check_revocation(self, chain: Sequence[x509.Certificate], proven_time: dt.datetime | None = None
                         ) -> Revocation:
        """Look every certificate below the root up in its issuer's CRLs.

        A listing in any of them counts (revocation is final; an older CRL without the entry does not
        undo a newer one with it). ``proven_time`` is a trusted time-stamp's time: a certificate
        revoked after it does not make an earlier signature worthless. Without one, any revocation
        refuses the signer.
        """
        if proven_time is None:
            key, rules = tuple(chain), (self.crls, self.require_crl)
            kept_for = self._revocations_of
            if kept_for[0] is rules[0] and kept_for[1] == rules[1]:
                found = self._revocations.get(key)
                if found is not None:
                    return found
            status = self._revocation(chain, None)
            # remembered for chains of a real size only (a chain is made of what a statement's sender sent)
            if sum(len(c.tbs_certificate_bytes) for c in key) <= MAX_BYTES:
                with self._chains_lock:
                    if self.crls is not rules[0] or self.require_crl != rules[1]:
                        return status       # the CRLs (or the rule) changed while it was worked out: not kept
                    kept_for = self._revocations_of
                    if kept_for[0] is not rules[0] or kept_for[1] != rules[1]:     # changed since: start again
                        self._revocations, self._revocations_of = {}, rules
                    if len(self._revocations) >= CHAIN_CACHE:
                        self._revocations.pop(next(iter(self._revocations)))
                    self._revocations[key] = status
            return status
        return self._revocation(chain, proven_time)

    def _revocation(self, chain: Sequence[x509.Certificate], proven_time: dt.datetime | None) -> Revocation:
        dates: list[dt.datetime] = []
        later: list[str] = []
        unchecked: list[str] = []
        for cert, issuer in itertools.pairwise(chain):
            crls = self._crls_for(cert, issuer)
            if not crls:
                if self.require_crl:
                    raise UntrustedSigner(f"no CRL from '{cert.issuer.rfc4514_string()}' to check {describe(cert)}; "
                                          "fetch the CA's current CRL")
                unchecked.append(describe(cert))
                continue
            dates.extend(crl.last_update_utc for crl in crls)
            for crl in crls:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is None:
                    continue
                when = entry.revocation_date_utc
                reason = ""
                try:
                    reason = f", reason {entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value}"
                except x509.ExtensionNotFound:
                    pass
                if proven_time is not None and as_utc(proven_time) < when:
                    later.append(f"{describe(cert)} revoked {when:%Y-%m-%d %H:%M:%S} UTC, after the time-stamp")
                    continue
                raise RevokedSigner(f"the certificate {describe(cert)} was revoked on {when:%Y-%m-%d %H:%M:%S} UTC"
                                    f"{reason} (CRL of '{crl.issuer.rfc4514_string()}' issued "
                                    f"{crl.last_update_utc:%Y-%m-%d %H:%M} UTC); what it signed is not accepted as "
                                    "evidence" + ("" if proven_time is None else
                                                  " (its time-stamp is not earlier than the revocation)"))
        return Revocation(checked=not unchecked, crl_dates=tuple(dates), revoked_later=tuple(dict.fromkeys(later)),
                          unchecked=tuple(unchecked))

    def check_certificate(self, cert: x509.Certificate, untrusted: Sequence[x509.Certificate], at: dt.datetime,
                          usage: Usage, proven_time: dt.datetime | None = None
                          ) -> tuple[list[x509.Certificate], Revocation]:
        """Chain, key usage and revocation for one certificate: everything trust means here."""
        chain = self.chain(cert, untrusted, at)
        self.check_usage(cert, usage)
        return chain, self.check_revocation(chain, proven_time)
