"""Information items: data whose integrity the receiver checks against a digest it expected.

Description terms: ``sha256`` (hex of the plaintext), ``length`` (bytes), optionally ``name``.

Exchange-enabling properties: *verifiable* (anyone holding the data checks the digest) and
*generatable* through key escrow: in a fair exchange the originator sends the data encrypted
(AES-256-GCM, associated data = the exchange id), and commits in its signed proposal to the
ciphertext's digest and to the key sealed to the third party (:mod:`.escrow`). The third party can
then release the key in the originator's place and check, before it does, that the key really
decrypts the ciphertext to the committed digest — if not, it says so in a signed finding.

Wire forms: plain ``{"plaintext"}``; commitment ``{"ciphertext_sha256", "nonce", "escrow",
"escrow_key"}`` with the attachment ``{"ciphertext"}``; release and replacement ``{"key"}``; what
the receiver keeps ``{"plaintext"}``.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import escrow as esc
from .binding import Binding
from .errors import CommitmentFalse, ItemMismatch, MalformedItem, NotGeneratable
from .items import Description, Item, b64d, b64e
from .managers import EscrowTarget, ManagerBase, OfferBase, TtpPowers
from .properties import Properties

AAD = b"semper-information/1\x00"
MAX_INFO = 8 * 1024 * 1024


def _aad(xid: str) -> bytes:
    return AAD + xid.encode()


def describe(data: bytes, name: str | None = None) -> Description:
    terms: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    if name:
        terms["name"] = name
    return Description("information", terms)


class InformationManager(ManagerBase):
    item_type = "information"

    def __init__(self, escrow_keys: Mapping[str, str] | None = None) -> None:
        """``escrow_keys``: third party certificate id -> its escrow key id, as this party knows them
        (a receiver then refuses a commitment sealed to any other key)."""
        self.escrow_keys = dict(escrow_keys or {})

    def check_description(self, d: Description) -> None:
        sha, length = d.terms.get("sha256"), d.terms.get("length")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise MalformedItem("an information description needs 'sha256': 64 lower-case hex digits")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= MAX_INFO:
            raise MalformedItem(f"an information description needs 'length': 0 to {MAX_INFO} bytes")

    def properties(self, d: Description) -> Properties:
        return Properties(verifiable=True, generatable=True, revocable=False, anonymous=True)   # names no sender

    def _plain(self, data: bytes, d: Description, where: str) -> Item:
        if len(data) != d.terms["length"] or hashlib.sha256(data).hexdigest() != d.terms["sha256"]:
            raise ItemMismatch(f"{where}: the data has {len(data)} bytes and SHA-256 "
                               f"{hashlib.sha256(data).hexdigest()[:16]}..., the description promised "
                               f"{d.terms['length']} bytes with SHA-256 {str(d.terms['sha256'])[:16]}...")
        return Item("information", {"plaintext": b64e(data)})

    def check(self, item: Item, d: Description, b: Binding | None, sender: x509.Certificate | None) -> Item:
        return self._plain(b64d(item.data.get("plaintext"), "information.plaintext", MAX_INFO), d, "the information")

    # ---- generatable transfers -----------------------------------------------------------------
    @staticmethod
    def _ciphertext(commitment: Mapping[str, Any], attachments: Mapping[str, Any]) -> bytes:
        ct = b64d(attachments.get("ciphertext"), "information.ciphertext", MAX_INFO + 16)
        if hashlib.sha256(ct).hexdigest() != commitment.get("ciphertext_sha256"):
            raise ItemMismatch("the ciphertext sent is not the one committed to in the proposal (SHA-256 differs)")
        return ct

    def check_commitment(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                         b: Binding) -> None:
        for key in ("ciphertext_sha256", "nonce", "escrow_key"):
            if not isinstance(commitment.get(key), str):
                raise MalformedItem(f"the information commitment lacks {key!r}")
        if not isinstance(commitment.get("escrow"), Mapping):
            raise MalformedItem("the information commitment lacks the escrowed key")
        ct = self._ciphertext(commitment, attachments)
        if len(ct) != d.terms["length"] + 16:
            raise ItemMismatch(f"the ciphertext has {len(ct)} bytes; {d.terms['length']} bytes of data encrypt to "
                               f"{d.terms['length'] + 16}")
        expected = self.escrow_keys.get(b.ttp_id or "")
        if expected is not None and commitment["escrow_key"] != expected:
            raise ItemMismatch("the key is escrowed to another key than the named third party's escrow key")

    def _decrypt(self, key: bytes, commitment: Mapping[str, Any], ct: bytes, d: Description, b: Binding) -> Item:
        nonce = b64d(commitment.get("nonce"), "information.nonce", 64)
        if len(key) != 32 or len(nonce) != 12:
            raise ItemMismatch("the released key or the committed nonce has the wrong length")
        try:
            data = AESGCM(key).decrypt(nonce, ct, _aad(b.xid))
        except InvalidTag:
            raise ItemMismatch("the released key does not decrypt the committed ciphertext") from None
        return self._plain(data, d, "the decrypted information")

    def check_release(self, item: Item, commitment: Mapping[str, Any], attachments: Mapping[str, Any],
                      d: Description, b: Binding) -> Item:
        key = b64d(item.data.get("key"), "information.key", 64)
        return self._decrypt(key, commitment, self._ciphertext(commitment, attachments), d, b)

    def generate(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                 b: Binding, powers: TtpPowers) -> dict[str, Any]:
        self.check_commitment(commitment, attachments, d, b)      # malformed / wrong attachment: the requester's fault
        ct = self._ciphertext(commitment, attachments)
        key = esc.open_seal(commitment["escrow"], b.xid, commitment["ciphertext_sha256"], powers.shared_secret)
        try:
            self._decrypt(key, commitment, ct, d, b)
        except ItemMismatch as e:
            raise CommitmentFalse(f"the originator's escrowed key does not yield the promised information: "
                                  f"{e}") from None
        return {"key": b64e(key)}

    def check_replacement(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          attachments: Mapping[str, Any], d: Description, b: Binding) -> Item:
        return self.check_release(Item("information", dict(replacement)), commitment, attachments, d, b)


class InformationOffer(OfferBase):
    """Data to send. The key and nonce for an exchange are derived from a secret seed and the
    exchange id, so a restarted sender releases the same key without having stored it."""

    def __init__(self, data: bytes, name: str | None = None, seed: bytes | None = None) -> None:
        import secrets
        self.data = data
        self.description = describe(data, name)
        self._seed = seed or secrets.token_bytes(32)

    def _key_nonce(self, xid: str) -> tuple[bytes, bytes]:
        key = hmac.new(self._seed, b"key\x00" + xid.encode(), hashlib.sha256).digest()
        nonce = hmac.new(self._seed, b"nonce\x00" + xid.encode(), hashlib.sha256).digest()[:12]
        return key, nonce

    def make(self, d: Description, b: Binding | None) -> Item:
        return Item("information", {"plaintext": b64e(self.data)})

    def commit(self, d: Description, b: Binding, escrow: EscrowTarget | None) -> tuple[dict[str, Any], dict[str, Any]]:
        if escrow is None:
            raise NotGeneratable("information is generatable only with the third party's escrow key; configure it")
        key, nonce = self._key_nonce(b.xid)
        ct = AESGCM(key).encrypt(nonce, self.data, _aad(b.xid))
        ct_sha = hashlib.sha256(ct).hexdigest()
        return ({"ciphertext_sha256": ct_sha, "nonce": b64e(nonce), "escrow_key": escrow.key_id,
                 "escrow": esc.seal(escrow.point, key, b.xid, ct_sha)},
                {"ciphertext": b64e(ct)})

    def release(self, d: Description, b: Binding) -> Item:
        return Item("information", {"key": b64e(self._key_nonce(b.xid)[0])})
