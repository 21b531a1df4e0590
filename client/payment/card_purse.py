"""Card purse payments with no bank: ``semper card load`` (the scheme's local issuer key) and ``semper
card pay`` (the buyer's card straight to a PSAM), and the tests and benches that drive a card.

Nothing of the purse is implemented here: both run the card-purse module (``modules/purse.py``), the
same code a purchase in a shop or an exchange runs. A load goes through the module's card-side steps
with the local issuer key standing in for the bank's issuer; a payment is the module's payer flow on
the card and its payee flow on the PSAM, under one payment manager each, messages handed over in
process. Every decision that matters (signatures, counters, balance) is made on the cards; a debit
whose answer was lost is read back from the card's log by the module.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from semper.hardware.errors import SemperError
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import DEBIT_PROOF, DebitRecord, LoadConfirmation, LoadRequest, Signed

from ..support.scheme import Scheme
from .errors import InstrumentError, PaymentRefused
from .manager import LocalPayee, PaymentManager, run_payment
from .model import Choice, Terms
from .module import PartyContext
from .modules.purse import PurseModule
from .wire import unb64


class PurseFlowError(SemperError):
    """Bad input to a card-only flow (an amount that is not positive)."""

    exit_status = 2
    http_status = 400
    code = "bad_input"


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


@dataclass
class LocalIssuer:
    """The scheme's local issuer key as the purse module's issuer: it checks the card's signed request
    against the scheme root and signs the command for exactly that request. No account is debited:
    this is the scheme operator making value, for tests, benches and a card of one's own."""

    scheme: Scheme

    def approve(self, request: Signed, card_certificate: bytes) -> Signed:
        try:
            self.scheme.verify_card_signature(card_certificate, request.record, request.signature)
        except (InvalidSignature, ValueError):
            raise PaymentRefused("the issuer refused the load: the card's request or certificate does not verify "
                                 "under the scheme root", "bad_signature") from None
        command = LoadRequest.decode(request.record).command()
        return Signed(command, self.scheme.sign_load(command))

    def confirmed(self, confirmation: Signed, card_certificate: bytes) -> None:
        pass                       # the local issuer keeps no records


def load(purse: PurseSession, issuer: Scheme, amount: int, pin: bytes | None = None) -> LoadResult:
    """Load ``amount`` (minor units) with the local issuer key; the PIN is verified first when given
    (without one, the card must have it verified already in this session, e.g. on the reader's PIN pad)."""
    if amount <= 0:
        raise PurseFlowError("the amount to load must be positive")

    def enter_pin(why: str, session: PurseSession) -> None:
        if pin is not None:
            session.verify_pin(pin)
    module = PurseModule(PartyContext(purse=purse, enter_pin=enter_pin))
    confirmation, signed = module.load_from(LocalIssuer(issuer), amount)
    return LoadResult(confirmation, signed)


def purchase(purse: PurseSession, psam: PsamSession, amount: int, root: x509.Certificate) -> PurchaseResult:
    """Pay ``amount`` from the card to the PSAM: the module's four messages (hello, the PSAM's signed
    request, the card's signed proof, the PSAM's receipt), the proof in the PSAM's batch at the end.
    ``root``: the purse scheme's root certificate, which the payee checks the card's hello against before
    its PSAM is asked (a payee without it refuses every hello: ``modules/purse.py``, ``NoSchemeRoot``)."""
    if amount <= 0:
        raise PurseFlowError("the amount to pay must be positive")
    payer = PaymentManager(PartyContext(purse=purse), modules={PurseModule.name: PurseModule})
    payee = PaymentManager(PartyContext(psam=psam, purse_root=root), modules={PurseModule.name: PurseModule})
    instruments = payer.instruments()
    if not instruments:
        raise InstrumentError("the purse card cannot be read; insert it and try again")
    card = instruments[0]
    terms = Terms.new(amount, card.currency, "psam", b"semper card pay", "the PSAM")
    payee.expect(terms)
    record = run_payment(payer.pay(terms, Choice(PurseModule.name, card)), LocalPayee(payee))
    ev = record.evidence
    signed = Signed(unb64(ev["proof"], "proof"), unb64(ev["proof_signature"], "proof signature"))
    return PurchaseResult(DebitRecord.decode(signed.record, DEBIT_PROOF), signed, int(ev["batch"]), int(ev["index"]))
