"""The hardware abstraction the SEMPER layers call: readers, APDU transport, card and token clients.

It knows APDUs and status words, not commerce. Upper layers get typed session objects and a small
exception hierarchy (:mod:`hardware.errors`); raw status words never leave this package.
"""

# Imported as a top-level package from the source tree, this would be a second copy of the project
# beside the installed one, with classes of its own that the other copy's checks do not recognise.
if not __name__.startswith("semper."):
    raise ImportError(f"import semper.{__name__}, not {__name__}: the project installs as the semper namespace")
