"""The payment modules that ship with semper, each after one of the paper's systems.

``purse`` (Chipper / GeldKarte card purse), ``setpay`` (SET account payment), ``ikp`` (iKP: 1KP,
2KP, 3KP), ``mandate`` (Mandate cheques), ``ecash`` (eCash blind-signature coins). They are found like any other module:
through the ``semper.payment_modules`` entry points in pyproject.toml.
"""
