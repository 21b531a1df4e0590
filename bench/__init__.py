"""Measurements and long-running checks behind ``semper bench`` and ``semper card tear-test``."""

# Imported as a top-level package from the source tree, this would be a second copy of the project
# beside the installed one, with classes of its own that the other copy's checks do not recognise.
if not __name__.startswith("semper."):
    raise ImportError(f"import semper.{__name__}, not {__name__}: the project installs as the semper namespace")
