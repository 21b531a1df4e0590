"""SEMPER's layers (supporting services, transfer, exchange, commerce) and the ``semper`` command."""
