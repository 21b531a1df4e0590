"""Which generic protocol fits two items: the exchange manager's negotiation rule.

The rule is the paper's: a generatable item for an externally verifiable one (gen-ver, figure 4),
a revocable item for a revocable one (rev-rev), and plain transfers when no fairness is asked for.
The originator is the party whose item the third party may have to *generate*; when only the
responder's item is generatable, the parties must swap roles (the message says so).
"""
from __future__ import annotations

from ..transfer.properties import Properties
from .errors import NoFairProtocol


def choose_protocol(originator: Properties, responder: Properties, fair: bool) -> str:
    if not fair:
        return "plain"
    if originator.generatable and responder.verifiable:
        return "gen-ver"
    if originator.revocable and responder.revocable:
        return "rev-rev"
    if responder.generatable and originator.verifiable:
        raise NoFairProtocol("only the responder's item is generatable: let that party originate the exchange "
                             "(gen-ver needs the generatable item on the originator's side)")
    raise NoFairProtocol(f"no fair protocol for these items: the originator's is {originator or 'none'}, the "
                         f"responder's is {responder or 'none'}; fairness needs a generatable item for a verifiable "
                         "one, or two revocable ones")
