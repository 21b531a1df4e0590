"""A memo for functions of bytes that come from the network: bounded by each entry's size, not only by count.

Why: the statement reader remembers what it computed for a certificate or a certificate set (parsed
certificates, their hashes, a signer's SignerInfo form), because the same few signers come with
every statement. ``functools.lru_cache(maxsize=n)`` bounds the entries, not their bytes, and a
certificate set in a statement is whatever its sender wrote: 1,000 refused statements of 16 MiB each
(the third party's request limit) kept about 20 GB (review of 2026-12-07, finding 1). Here a call
whose byte arguments are larger than ``max_bytes`` together is computed and not kept. Real
certificates are 0.5-2 KB, a semper certificate set one or two of them.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

#: the most bytes (all ``bytes`` arguments of one call, tuples of bytes counted whole) a memo keeps an entry for
MAX_BYTES = 16 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def size_of(args: tuple[Any, ...]) -> int:
    """The bytes a memo's key would hold: ``bytes`` and ``str`` arguments and tuples of them, by length."""
    total = 0
    for a in args:
        if isinstance(a, (bytes, bytearray, memoryview, str)):
            total += len(a)
        elif isinstance(a, tuple):
            total += size_of(a)
    return total


def small_cache(maxsize: int, max_bytes: int = MAX_BYTES) -> Callable[[F], F]:
    """``functools.lru_cache(maxsize)`` for calls whose arguments are at most ``max_bytes`` (:func:`size_of`);
    a larger call runs each time. ``cache_clear`` and ``cache_info`` are the memo's."""
    def wrap(fn: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            if size_of(args) <= max_bytes:
                return cached(*args)
            return fn(*args)
        call.cache_clear = cached.cache_clear        # type: ignore[attr-defined]
        call.cache_info = cached.cache_info          # type: ignore[attr-defined]
        return cast(F, call)
    return wrap
