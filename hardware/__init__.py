"""The hardware abstraction the SEMPER layers call: readers, APDU transport, card and token clients.

It knows APDUs and status words, not commerce. Upper layers get typed session objects and a small
exception hierarchy (:mod:`hardware.errors`); raw status words never leave this package.
"""
