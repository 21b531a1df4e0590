"""Measurements and long-running checks behind ``semper bench`` and ``semper card tear-test``."""
