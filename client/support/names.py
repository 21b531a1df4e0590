"""Names a person could take for one another: Unicode TR39 checks through ICU's SpoofChecker.

Why here (a supporting service): the CA refuses such names before it certifies them, and the TINGUIN
marks the suspicious characters of names certified before the CA had this rule. Both must judge a
name the same way, with the same data, so both ask this module.

Why ICU: Unicode Technical Standard #39 (Security Mechanisms) defines the *skeleton* (two strings
are confusable when their skeletons are equal), the *restriction levels* (which mixes of scripts
are acceptable) and the *identifier profile* (which characters are recommended); ICU implements all
three from the Unicode data of its release and PyICU exposes them. We link the system's ICU
(Debian's libicu, updated with the distribution); :data:`UNICODE_VERSION` says which data it has.

What a certified name must be (:func:`problems` lists every rule broken, naming the characters as
``U+XXXX NAME``):

* **visible characters only**: printable ASCII, or characters in TR39's recommended or inclusion
  identifier sets. This refuses blank-looking letters (U+3164 HANGUL FILLER, U+FFA0 HALFWIDTH HANGUL
  FILLER, U+2800 BRAILLE PATTERN BLANK), full-width and other compatibility forms (U+FF11 FULLWIDTH
  DIGIT ONE), control, format and invisible characters, symbols and pictographs;
* **one script** (TR39 "highly restrictive"): one script, or Latin with the usual Japanese
  (Han, Hiragana, Katakana), Korean (Han, Hangul) or Chinese (Han, Bopomofo) mix. ``Teapot Shоp``
  with a Cyrillic ``о`` is refused;
* **one number system** for its digits, and no stacked combining marks (ICU's MIXED_NUMBERS and
  INVISIBLE checks).

:func:`key` is what two *different* names may not share: the TR39 skeleton, case-folded and
skeletonised again, so ``Shop``, ``SHOP``, ``SH0P`` and the all-Cyrillic ``Ѕһор`` have one key.
"""
from __future__ import annotations

import functools
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass

import icu

UNICODE_VERSION: str = icu.UNICODE_VERSION
ICU_VERSION: str = icu.ICU_VERSION
DATA = f"Unicode {UNICODE_VERSION} (ICU {ICU_VERSION})"

_CHECKS = icu.USpoofChecks.RESTRICTION_LEVEL | icu.USpoofChecks.MIXED_NUMBERS | icu.USpoofChecks.INVISIBLE
_COMMON = {icu.UScriptCode.COMMON, icu.UScriptCode.INHERITED}
_HAN, _JPAN, _KORE, _HANB = (icu.UScriptCode.HAN, icu.UScriptCode.JAPANESE, icu.UScriptCode.KOREAN,
                             icu.UScriptCode.HAN_WITH_BOPOMOFO)
_AUGMENT = {_HAN: (_JPAN, _KORE, _HANB), icu.UScriptCode.HIRAGANA: (_JPAN,), icu.UScriptCode.KATAKANA: (_JPAN,),
            icu.UScriptCode.HANGUL: (_KORE,), icu.UScriptCode.BOPOMOFO: (_HANB,)}
_ALLOWED = icu.UnicodeSet()                 # (a copy of a frozen set stays frozen: build a new one)
_ALLOWED.addAll(icu.SpoofChecker.getRecommendedUnicodeSet())
_ALLOWED.addAll(icu.SpoofChecker.getInclusionUnicodeSet())
_ALLOWED.add(" ", "~")                 # printable ASCII: names like "Smith & Sons (UK)"
_ALLOWED.freeze()
_local = threading.local()


def _checker() -> icu.SpoofChecker:
    """One configured checker per thread (the CA checks names from a thread pool)."""
    checker = getattr(_local, "checker", None)
    if checker is None:
        checker = icu.SpoofChecker()
        checker.setRestrictionLevel(icu.URestrictionLevel.HIGHLY_RESTRICTIVE)
        checker.setChecks(_CHECKS)
        _local.checker = checker
    return checker


def describe(ch: str) -> str:
    """``U+043E CYRILLIC SMALL LETTER O``: how a person can look a character up."""
    cp = ord(ch)
    if 0xD800 <= cp <= 0xDFFF:
        return f"U+{cp:04X} <lone surrogate>"
    return f"U+{cp:04X} {icu.Char.charName(ch, icu.UCharNameChoice.EXTENDED_CHAR_NAME)}"


def _described(chars: list[str]) -> str:
    return ", ".join(describe(c) for c in dict.fromkeys(chars))


def _scripts(ch: str) -> frozenset[int]:
    """The scripts a character is written in (TR39 augmented: Han also counts as Japanese, ...)."""
    out = set(icu.Script.getScriptExtensions(ch)) - _COMMON
    for code in list(out):
        out.update(_AUGMENT.get(code, ()))
    return frozenset(out)


def script_name(code: int) -> str:
    return str(icu.Script(code).getName()).replace("_", " ")


@dataclass(frozen=True)
class Suspect:
    """A character of a name that the CA's rules would refuse now, and why (for the TINGUIN's marks)."""

    index: int
    char: str
    reason: str

    @property
    def code(self) -> str:
        return describe(self.char)


def main_script(name: str) -> int | None:
    """The script most of the name's letters are written in (None: only digits, spaces, punctuation)."""
    counts: Counter[int] = Counter()
    for ch in name:
        counts.update(_scripts(ch))
    if not counts:
        return None
    best = max(counts.values())
    order = [code for ch in name for code in sorted(icu.Script.getScriptExtensions(ch)) if counts[code] == best]
    return order[0] if order else max(counts, key=lambda c: counts[c])


def _not_allowed(name: str) -> list[str]:
    return [ch for ch in name if 0xD800 <= ord(ch) <= 0xDFFF or not _ALLOWED.contains(ch)]


def outside_script(name: str) -> tuple[int | None, list[int]]:
    """(main script, indexes of the characters written in another script), when the name mixes scripts."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return None, []
    if not _checker().check(name) & icu.USpoofChecks.RESTRICTION_LEVEL:
        return main_script(name), []
    main = main_script(name)
    return main, [i for i, ch in enumerate(name) if _scripts(ch) and main not in _scripts(ch)]


def suspects(name: str) -> list[Suspect]:
    """The characters of ``name`` a person should look at twice (the TINGUIN highlights and lists them)."""
    return list(_suspects(name))


@functools.lru_cache(maxsize=256)
def _suspects(name: str) -> tuple[Suspect, ...]:
    """Kept per name: a pure function of the name and this process's Unicode data, asked for every
    certified name on every confirmation page (the seller's, its CA's, the buyer's own)."""
    main, foreign = outside_script(name)
    found = {i: f"not {script_name(main)} like the rest of the name" for i in foreign if main is not None}
    for i, ch in enumerate(name):
        if i not in found and (0xD800 <= ord(ch) <= 0xDFFF or not _ALLOWED.contains(ch)):
            found[i] = "not a character for names (blank-looking, full-width, invisible or a symbol)"
    return tuple(Suspect(i, name[i], found[i]) for i in sorted(found))


def problems(name: str) -> list[str]:
    """Every rule for certified names that ``name`` breaks, in words naming the characters ([]: none)."""
    out = []
    bad = _not_allowed(name)
    if bad:
        out.append(f"it contains characters that are not allowed in a certified name (blank-looking, "
                   f"full-width, invisible or symbols; Unicode TR39 identifier profile): {_described(bad)}")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return out
    result = _checker().check(name)
    main, foreign = outside_script(name)
    chars = [name[i] for i in foreign if name[i] not in bad]
    if result & icu.USpoofChecks.RESTRICTION_LEVEL and (chars or not bad):
        chars = chars or [ch for ch in name if _scripts(ch)]
        where = f"it is mostly {script_name(main)}, but has " if main is not None else "it has "
        out.append(where + "characters of other scripts that can look alike: "
                   + ", ".join(f"{describe(c)} ({'/'.join(script_name(s) for s in sorted(_scripts(c)))})"
                               for c in dict.fromkeys(chars)))
    if result & icu.USpoofChecks.MIXED_NUMBERS:
        digits = [ch for ch in name if unicodedata.category(ch) == "Nd"]
        systems = Counter(ord(ch) - unicodedata.digit(ch, 0) for ch in digits)
        usual = systems.most_common(1)[0][0] if systems else 0
        out.append("it mixes digits of different number systems: "
                   + _described([ch for ch in digits if ord(ch) - unicodedata.digit(ch, 0) != usual]))
    if result & icu.USpoofChecks.INVISIBLE:
        marks = [ch for ch in unicodedata.normalize("NFD", name) if unicodedata.category(ch) in ("Mn", "Me")]
        out.append("it stacks the same combining mark twice (the second is invisible): " + _described(marks))
    return out


def key(name: str) -> str:
    """What names that look alike share: skeleton(casefold(skeleton(name))), TR39 skeletons."""
    checker = _checker()
    return str(checker.getSkeleton(0, str(checker.getSkeleton(0, name)).casefold()))


__all__ = ["DATA", "ICU_VERSION", "UNICODE_VERSION", "Suspect", "describe", "key", "main_script", "outside_script",
           "problems", "script_name", "suspects"]
