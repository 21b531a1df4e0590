"""PKCS#11 tokens: the same signer protocol as the PIV card, over any PKCS#11 module.

``module`` loads a library and finds tokens by label, ``signer`` is ``Pkcs11Signer``, ``softhsm``
provisions SoftHSM2 tokens in a folder of their own, ``errors`` maps CKR codes to the hardware
exceptions, ``agent`` holds a token open in a process of its own (the purse scheme's).
"""

# Imported as a top-level package from the source tree, this would be a second copy of the project
# beside the installed one, with classes of its own that the other copy's checks do not recognise.
if not __name__.startswith("semper."):
    raise ImportError(f"import semper.{__name__}, not {__name__}: the project installs as the semper namespace")
