"""``semper chaos``: randomised commerce runs under injected faults, each followed by the checks.

Why a package of its own: the fault injectors (a tearable card process, a TCP proxy that drops or
crashes the party behind it, a cheating shop), the seeded plan, the checks and the runner each have
one job, and the checks must be usable (and testable) without any fault at all. Every run's seed
determines its whole plan, so a failing run replays from that one number.
"""

# Imported as a top-level package from the source tree, this would be a second copy of the project
# beside the installed one, with classes of its own that the other copy's checks do not recognise.
if not __name__.startswith("semper."):
    raise ImportError(f"import semper.{__name__}, not {__name__}: the project installs as the semper namespace")
