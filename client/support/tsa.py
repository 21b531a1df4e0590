"""RFC 3161 time-stamping: the third party's time-stamp authority and the client's helpers.

Why: a signer's claimed signing time is only its word; a time-stamp from the third party proves a
signature existed at a time, so a statement signed before its key was revoked stays evidence.
The token covers a statement's *signature value* and travels inside the statement as the unsigned
attribute id-aa-timeStampToken (RFC 3161 appendix A), where it does not disturb the signature.

Bytes in, bytes out: :meth:`TimeStampAuthority.respond` takes a DER TimeStampReq and returns a DER
TimeStampResp, so the third party's HTTP service only has to mount it (``application/timestamp-query``
in, ``application/timestamp-reply`` out) and a client passes any ``Callable[[bytes], bytes]`` as the
transport. ``openssl ts -verify`` accepts the responses and tokens.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from asn1crypto import cms, core, tsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from semper.hardware.errors import HardwareError
from semper.hardware.signer import Signer

from .cms import (
    ARC,
    BadTimestamp,
    EvidenceError,
    SigningError,
    Statement,
    add_unsigned_attribute,
    build_signed_data,
    check_integrity,
    parse_signed_data,
    parse_statement,
)
from .trust import TrustStore, Usage

#: the semper TSA policy: time from the third party's host clock (NTP-disciplined), accuracy 1 s
TSA_POLICY_OID = ARC + ".3.1"
ACCEPTED_DIGESTS = {"sha256": 32, "sha384": 48, "sha512": 64}


class TimeStampResponse(core.Sequence):
    """TimeStampResp as RFC 3161 defines it: the token is OPTIONAL (absent when refused).

    asn1crypto's own class makes the token mandatory, so a refusal could not be encoded with it.
    """

    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


@dataclass(frozen=True)
class TimeStampInfo:
    """A verified time-stamp: when, by whom, over which digest."""

    gen_time: dt.datetime
    serial_number: int
    policy: str
    digest_algorithm: str
    digest: bytes
    nonce: int | None
    tsa_cert: x509.Certificate
    token: bytes                    # the ContentInfo (SignedData) DER
    revocation_checked: bool = False    # whether a CRL covered the TSA's certificate chain

    @property
    def tsa_name(self) -> str:
        return self.tsa_cert.subject.rfc4514_string()


@dataclass(frozen=True)
class TimeStampRequest:
    der: bytes
    digest_algorithm: str
    digest: bytes
    nonce: int | None


# ---- the authority -------------------------------------------------------------------------------
class TimeStampAuthority:
    """Answers time-stamp requests with tokens signed by ``signer`` (a card or token key).

    ``cert`` is the TSA certificate for that key: it must carry the critical extended key usage
    id-kp-timeStamping and nothing else (RFC 3161 2.3), which is checked here so a misissued
    certificate fails at start-up rather than in every client. ``pin`` is presented before each
    signature for keys that demand it (PIV 9C); a server key normally stays logged in instead.
    """

    def __init__(self, signer: Signer, cert: bytes | x509.Certificate, *, policy: str = TSA_POLICY_OID,
                 chain: Iterable[bytes | x509.Certificate] = (), pin: bytes | None = None,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.signer = signer
        self.cert = cert if isinstance(cert, x509.Certificate) else x509.load_der_x509_certificate(cert)
        self.cert_der = self.cert.public_bytes(Encoding.DER)
        TrustStore.check_usage(self.cert, Usage.TIMESTAMPING)
        public = self.cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or \
                public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) != signer.public_point():
            raise SigningError("the TSA certificate is not for the key of "
                               f"{getattr(signer, 'label', 'the signer')}; certify that key for time-stamping")
        self.policy = policy
        self.chain = [c if isinstance(c, bytes) else c.public_bytes(Encoding.DER) for c in chain]
        self.pin = pin
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @staticmethod
    def _refuse(fail: str, text: str) -> bytes:
        return TimeStampResponse({"status": {"status": "rejection", "status_string": [text],
                                             "fail_info": {fail}}}).dump()

    def respond(self, request_der: bytes) -> bytes:
        """A TimeStampResp for any bytes: a token when the request is acceptable, a refusal otherwise."""
        try:
            req = tsp.TimeStampReq.load(request_der, strict=True)
            req.native  # noqa: B018  (parse completely: garbage must be refused, not half-read)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:  # asn1crypto on
            return self._refuse("bad_data_format", f"not a DER TimeStampReq ({e})")                   # garbage (cms.py)
        if req["version"].native != "v1":
            return self._refuse("bad_request", "only TimeStampReq version 1 is supported")
        alg = req["message_imprint"]["hash_algorithm"]["algorithm"].native
        digest = req["message_imprint"]["hashed_message"].native
        if alg not in ACCEPTED_DIGESTS:
            return self._refuse("bad_alg", f"hash algorithm {alg} is not accepted (use SHA-256, -384 or -512)")
        if len(digest) != ACCEPTED_DIGESTS[alg]:
            return self._refuse("bad_data_format",
                                f"a {alg} imprint has {ACCEPTED_DIGESTS[alg]} bytes, not {len(digest)}")
        if req["req_policy"].native is not None and req["req_policy"].dotted != self.policy:
            return self._refuse("unaccepted_policy", f"this TSA issues only under policy {self.policy}")
        if req["extensions"].native:
            return self._refuse("unaccepted_extensions", "this TSA accepts no request extensions")
        gen_time = self.clock().astimezone(dt.UTC).replace(microsecond=0)
        info = {
            "version": "v1",
            "policy": self.policy,
            "message_imprint": req["message_imprint"],
            "serial_number": secrets.randbits(127),        # unique with overwhelming probability, < 20 octets
            "gen_time": gen_time,
            "accuracy": {"seconds": 1},
            "tsa": a_x509.GeneralName(name="directory_name",
                                      value=a_x509.Certificate.load(self.cert_der).subject),
        }
        if req["nonce"].native is not None:
            info["nonce"] = req["nonce"].native
        cert_req = bool(req["cert_req"].native)
        try:
            token = build_signed_data(self.signer, "tst_info", tsp.TSTInfo(info).dump(), include_certs=cert_req,
                                      extra_certs=self.chain if cert_req else (), signing_time=gen_time,
                                      pin=self.pin, signer_cert=self.cert_der)
        except (HardwareError, EvidenceError) as e:
            return self._refuse("system_failure", f"the TSA cannot sign now ({e})")
        return TimeStampResponse({"status": {"status": "granted"},
                                  "time_stamp_token": cms.ContentInfo.load(token)}).dump()


# ---- the client --------------------------------------------------------------------------------
def make_request(data: bytes | None = None, *, digest: bytes | None = None, algorithm: str = "sha256",
                 nonce: bool = True, cert_req: bool = True, policy: str | None = None) -> TimeStampRequest:
    """A TimeStampReq over ``data`` (hashed here) or a ready ``digest``; a random nonce binds the reply."""
    if (data is None) == (digest is None):
        raise ValueError("give either data or digest")
    if algorithm not in ACCEPTED_DIGESTS:
        raise ValueError(f"unsupported digest {algorithm}")
    value = hashlib.new(algorithm, data).digest() if data is not None else bytes(digest or b"")
    req: dict[str, object] = {"version": "v1", "message_imprint": {
        "hash_algorithm": {"algorithm": algorithm, "parameters": None}, "hashed_message": value},
        "cert_req": cert_req}
    n = secrets.randbits(63) if nonce else None
    if n is not None:
        req["nonce"] = n
    if policy is not None:
        req["req_policy"] = policy
    return TimeStampRequest(tsp.TimeStampReq(req).dump(), algorithm, value, n)


def verify_token(token: bytes, trust: TrustStore, *, data: bytes | None = None, digest: bytes | None = None,
                 nonce: int | None = None) -> TimeStampInfo:
    """Check a time-stamp token: signature, TSA certificate (chain, critical timeStamping, CRL), imprint."""
    parts = parse_signed_data(token, "tst_info", what="time-stamp token")
    if parts.signing_cert_hash is None:
        raise BadTimestamp("the time-stamp token lacks the ESS signing-certificate attribute RFC 3161 requires")
    try:
        check_integrity(parts, what="time-stamp token")
    except EvidenceError as e:
        raise BadTimestamp(str(e)) from None
    try:
        info = tsp.TSTInfo.load(parts.content, strict=True)
        info.native  # noqa: B018  (parse it all now: a malformed TSTInfo fails here, not half-read later)
    except (ValueError, TypeError) as e:
        raise BadTimestamp(f"the time-stamp token's TSTInfo is not valid DER ({e})") from None
    if info["version"].native != "v1":
        raise BadTimestamp("the time-stamp token is not TSTInfo version 1")
    alg = info["message_imprint"]["hash_algorithm"]["algorithm"].native
    imprint = info["message_imprint"]["hashed_message"].native
    if alg not in ACCEPTED_DIGESTS:
        raise BadTimestamp(f"the time-stamp uses the digest {alg}, which semper does not accept")
    if data is not None:
        digest = hashlib.new(alg, data).digest()
    if digest is not None and digest != imprint:
        raise BadTimestamp("the time-stamp covers other data than the signature it is attached to")
    if nonce is not None and info["nonce"].native != nonce:
        raise BadTimestamp("the time-stamp answers another request (nonce mismatch): replayed or mixed up")
    gen_time: dt.datetime = info["gen_time"].native
    _chain, revocation = trust.check_certificate(parts.signer_cert, parts.certificates, gen_time, Usage.TIMESTAMPING)
    return TimeStampInfo(gen_time=gen_time, serial_number=info["serial_number"].native,
                         policy=info["policy"].dotted, digest_algorithm=alg, digest=imprint,
                         nonce=info["nonce"].native, tsa_cert=parts.signer_cert, token=token,
                         revocation_checked=revocation.checked)


def check_response(response: bytes, request: TimeStampRequest, trust: TrustStore) -> TimeStampInfo:
    """Accept a TimeStampResp only if granted and its token verifies for exactly this request."""
    try:
        resp = TimeStampResponse.load(response, strict=True)
        resp["status"].native  # noqa: B018  (the token is parsed by verify_token)
    except (ValueError, TypeError) as e:
        raise BadTimestamp(f"the TSA's answer is not a DER TimeStampResp ({e})") from None
    status = resp["status"]
    if status["status"].native not in ("granted", "granted_with_mods"):
        text = "; ".join(status["status_string"].native or []) or "no reason given"
        fails = ", ".join(sorted(status["fail_info"].native or ())) if status["fail_info"].native else "none"
        raise BadTimestamp(f"the TSA refused the request: {status['status'].native} ({text}; failure: {fails})")
    if resp["time_stamp_token"].native is None:
        raise BadTimestamp("the TSA granted the request but sent no token")
    return verify_token(resp["time_stamp_token"].dump(), trust, digest=request.digest, nonce=request.nonce)


def timestamp_statement(statement_der: bytes, tsa: Callable[[bytes], bytes], trust: TrustStore) -> bytes:
    """Time-stamp a statement's signature and return the statement carrying the token.

    ``tsa`` is the transport: :meth:`TimeStampAuthority.respond` in process, or an HTTP client.
    The token is verified before it is attached, so a broken TSA cannot plant a bad token.
    """
    statement = parse_statement(statement_der)
    request = make_request(statement.signature)
    info = check_response(tsa(request.der), request, trust)
    return add_unsigned_attribute(statement_der, "signature_time_stamp_token", info.token)


def verify_statement_timestamps(statement: Statement, trust: TrustStore) -> TimeStampInfo | None:
    """Every token on a statement must verify over its signature; the earliest one is what counts."""
    infos = [verify_token(t, trust, data=statement.signature) for t in statement.timestamp_tokens]
    return min(infos, key=lambda i: i.gen_time) if infos else None
