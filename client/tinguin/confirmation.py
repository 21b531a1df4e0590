"""The confirmation text: rendered from a ConfirmationRequest, shown verbatim, and digested for signing.

Why a pure function: what-you-see-is-what-you-sign. The TINGUIN shows exactly the string
:func:`render` returns (as plain text, no markup), and the buyer's signature on the order covers
:func:`digest` of it. A verifier holding the same verified offer and request re-renders the text
and compares digests, so the evidence proves what the user was shown. The text therefore depends
on nothing but the request (no clock, no terminal width, no locale), its layout is versioned by
its first line, and every piece of seller text in it has passed through
:func:`client.tinguin.literal.literal` (one line each, escapes visible, length-limited).
"""
from __future__ import annotations

import datetime as dt
import hashlib

from client.support.money import format_amount

from .literal import literal
from .model import ConfirmationRequest, Party, VerifiedOffer

FORMAT_LINE = "SEMPER TINGUIN confirmation v1"
FIELD_LIMIT = 72            # cells for one piece of seller text inside the confirmation


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _quoted(text: str, limit: int = FIELD_LIMIT) -> str:
    return "\u201c" + literal(text, limit) + "\u201d"


def party_lines(party: Party, indent: str = "  ") -> list[str]:
    """A certified party in words: name, organisation, country, and how to recognise the certificate."""
    who = literal(party.name, FIELD_LIMIT)
    extra = ", ".join(literal(x, 40) for x in (party.organisation, party.country) if x)
    return [f"{indent}{who}" + (f" ({extra})" if extra else ""),
            f"{indent}certificate {literal(party.serial, 48)} issued by {literal(party.issuer, FIELD_LIMIT)}",
            f"{indent}certificate SHA-256 {party.fingerprint[:32]}…"]


def offer_lines(offer: VerifiedOffer) -> list[str]:
    """The verified offer: who signed it, what was checked, every item and the recomputed total."""
    v = offer.verification
    lines = ["Seller, as named by its certificate (checked on this computer):", *party_lines(v.signer),
             f"Offer {_quoted(offer.offer_id, 48)} signed {_when(v.signing_time)} ({literal(v.time_source, 80)})",
             f"  signature and certificate chain to {literal(v.root, FIELD_LIMIT)} verified; revocation "
             + ("checked" if v.revocation_checked else "NOT checked (no CRL)"),
             f"  offer statement SHA-256 {v.statement_digest}"]
    if offer.valid_until is not None:
        lines.append(f"  offer valid until {_when(offer.valid_until)}")
    lines.append("Items:")
    for n, item in enumerate(offer.items, 1):
        lines.append(f"  {n}. {_quoted(item.description)}")
        lines.append(f"     {item.quantity} x {format_amount(item.unit_price, offer.currency)} = "
                     f"{format_amount(item.total, offer.currency)}")
    lines.append(f"Total: {format_amount(offer.total, offer.currency)}")
    return lines


def render(request: ConfirmationRequest) -> str:
    """The exact confirmation text; same request, same text, on every machine."""
    offer = request.offer
    lines = [FORMAT_LINE,
             f"You are asked to {request.action.value}.",
             f"Deal {_quoted(request.deal_id, 48)}",
             *offer_lines(offer),
             (f"Pay {format_amount(offer.total, offer.currency)} with: {literal(request.payment.label, 60)} "
              f"({literal(request.payment.module, 40)})")]
    if request.details:
        lines.append("Order details (signed with the order):")
        lines += [f"  {literal(label, 30)}: {_quoted(value)}" for label, value in request.details]
    if request.signer is not None:
        lines += ["Signed by you as:", *party_lines(request.signer)]
    else:
        lines.append("Signed by you: no identity certificate is used (anonymous deal)")
    if request.attributes:
        lines.append("Deal attributes: " + ", ".join(literal(a, 40) for a in request.attributes))
    return "\n".join(lines) + "\n"


def digest(text: str) -> bytes:
    """What the order signature covers: SHA-256 of the shown text in UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).digest()


__all__ = ["FORMAT_LINE", "digest", "offer_lines", "party_lines", "render"]
