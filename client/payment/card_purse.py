"""Card purse flows (Chipper / GeldKarte style): load with the issuer, pay through a PSAM.

These are the host's steps between the card, the seller's PSAM and the issuer; every decision
that matters (signatures, counters, balance) is made on the cards. When an answer is lost after
the card committed (a tear, a pulled reader), the signed record is read back from the card's log,
so no value is lost on the host's side either.
"""
from __future__ import annotations

from dataclasses import dataclass

from semper.hardware import errors
from semper.hardware.errors import SemperError
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import DebitRecord, LoadConfirmation, Signed

from ..support.scheme import Scheme


class PurseFlowError(SemperError):
    """A load or purchase between card, PSAM and issuer did not complete; the message says where."""

    http_status = 422
    code = "purse_flow_failed"


@dataclass(frozen=True)
class LoadResult:
    confirmation: LoadConfirmation
    signed: Signed


@dataclass(frozen=True)
class PurchaseResult:
    proof: DebitRecord
    signed: Signed
    batch_number: int
    batch_index: int


def load(purse: PurseSession, issuer: Scheme, amount: int, pin: bytes | None = None) -> LoadResult:
    """Load ``amount`` (minor units) from the issuer; the PIN is verified first when given."""
    if amount <= 0:
        raise PurseFlowError("the amount to load must be positive")
    info = purse.info()
    if pin is not None:
        purse.verify_pin(pin)
    request, signed_request = purse.initialize_load(amount, info.currency)
    # The issuer's side: check the card's signed request, then approve exactly that request.
    issuer.verify_card_signature(purse.certificate(), signed_request.record, signed_request.signature)
    command = request.command()
    confirmation, signed = purse.load(Signed(command, issuer.sign_load(command)))
    return LoadResult(confirmation, signed)


def purchase(purse: PurseSession, psam: PsamSession, amount: int) -> PurchaseResult:
    """Pay ``amount`` from the card to the PSAM: request, debit on the card, proof into the batch."""
    if amount <= 0:
        raise PurseFlowError("the amount to pay must be positive")
    info = purse.info()
    request, signed_request = psam.begin_debit(info.card_number, info.debit_counter + 1, amount, info.currency)
    psam_cert = psam.certificate()
    try:
        proof, signed_proof = purse.debit(psam_cert, signed_request)
    except errors.TransportError:
        recovered = purse.find_debit_proof(request)
        if recovered is None:
            raise
        proof, signed_proof = recovered
    batch_number, index, _total = psam.complete_debit(purse.certificate(), signed_proof)
    return PurchaseResult(proof, signed_proof, batch_number, index)


