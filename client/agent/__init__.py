"""The buyer's local agent (``semper agent``): where a shop's web page hands a purchase to the buyer's client.

A business application above the commerce layer, like ``semper buy``: the page may only ask (shop, offer
id, form); the agent fetches and verifies the signed offer itself and runs the deal with the TINGUIN.
``handoff`` reads the request, ``service`` is the loopback endpoint with its origin, host, secret and
rate checks and the queue of deals, ``desktop`` registers the ``web+semper:`` link handler. The protocol
and its threat model: docs/web.md.
"""
