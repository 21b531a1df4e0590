"""``semper chaos``: randomised commerce runs under injected faults, each followed by the checks.

Why a package of its own: the fault injectors (a tearable card process, a TCP proxy that drops or
crashes the party behind it, a cheating shop), the seeded plan, the checks and the runner each have
one job, and the checks must be usable (and testable) without any fault at all. Every run's seed
determines its whole plan, so a failing run replays from that one number.
"""
