"""The simulated smartcard: a card OS with applets and a tear-safe persistent image.

Nothing in this package imports the host side (``hardware``, ``client``, ``hsm``): the card only
ever sees APDUs, exactly like a card in a reader.
"""
