"""``semper init``: set up this computer for a user, starting with the personal trust phrase.

Why the phrase: the TINGUIN is the only window whose PIN prompts and confirmations count, and a
seller's page or a look-alike program can draw a perfect copy of it. What a copy cannot show is
the phrase the user chose here: it is stored only in the local preferences file, never sent to
anyone, and the real TINGUIN shows it at the top of every screen.
"""
from __future__ import annotations

import argparse
import secrets
import sys

from . import UsageError, emit, json_arg

# short, distinct, easy to read back; a phrase from these is for recognising a window, not a password
_WORDS = ("amber", "birch", "cobalt", "dune", "ember", "fjord", "garnet", "harbour", "indigo", "juniper", "kestrel",
          "lantern", "meadow", "nutmeg", "orchid", "pebble", "quartz", "russet", "saffron", "thistle", "umber",
          "velvet", "willow", "yarrow", "zephyr", "otter", "heron", "badger", "falcon", "marten", "puffin", "lynx")


def suggest_phrase() -> str:
    """Three random words and a number, e.g. 'cobalt heron meadow 47'."""
    words = [secrets.choice(_WORDS) for _ in range(3)]
    return " ".join(words) + f" {secrets.randbelow(90) + 10}"


def check_phrase(phrase: str) -> str:
    """The phrase as it will be shown, or UsageError saying what to change."""
    from ..tinguin.literal import literal
    phrase = phrase.strip()
    if not 4 <= len(phrase) <= 64:
        raise UsageError("the phrase must have 4 to 64 characters")
    if literal(phrase, 64) != phrase:
        raise UsageError("the phrase has characters the TINGUIN would show as escapes (control, invisible, "
                         "frame or check-mark characters, or a backslash); use letters, digits, spaces and "
                         "ordinary punctuation")
    if len(set(phrase.lower()) - {" "}) < 4:
        raise UsageError("the phrase is too easy to guess; use a few words only you would choose")
    return phrase


def _ask() -> str:
    print("Choose your personal phrase. Every real TINGUIN window shows it at the top; a window that asks for\n"
          "your PIN or a confirmation without it is a fake. Pick something a seller cannot guess (it is never\n"
          "sent anywhere). Press Enter alone for a suggestion.")
    line = input("phrase: ").strip()
    if line:
        return line
    suggestion = suggest_phrase()
    if input(f"use '{suggestion}'? [Y/n] ").strip().lower() in ("", "y", "yes"):
        return suggestion
    raise UsageError("no phrase chosen; run 'semper init' again")


def cmd_init(args: argparse.Namespace) -> int:
    from ..support import prefs
    current = prefs.load().get("trust.phrase")
    if current and not args.force:
        raise UsageError(f"a personal phrase is already set (in {prefs.prefs_path()}); to choose a new one run "
                         "'semper init --force'")
    if args.phrase is not None:
        phrase = args.phrase
    elif args.phrase_stdin:
        phrase = sys.stdin.readline()
        if not phrase.strip():
            raise UsageError("expected the phrase on standard input")
    elif args.generate:
        phrase = suggest_phrase()
    elif sys.stdin.isatty():
        phrase = _ask()
    else:
        raise UsageError("no terminal to ask for the phrase; pass --phrase TEXT, --phrase-stdin or --generate")
    phrase = check_phrase(phrase)
    saved = prefs.set_value("trust.phrase", phrase)
    emit(args, {"phrase": phrase, "path": str(saved.path)},
         f"your personal phrase is set (in {saved.path}):\n\n    {phrase}\n\n"
         "Every real TINGUIN window shows it at the top. If a window asks for your PIN or a confirmation\n"
         "and does not show this phrase, type nothing into it. See it now with 'semper ui'.")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("init", help="choose your personal phrase (shown in the TINGUIN's frame) and write your "
                                    "preferences")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--phrase", help="the phrase (4-64 characters); default: ask")
    how.add_argument("--phrase-stdin", action="store_true", help="read the phrase from standard input")
    how.add_argument("--generate", action="store_true", help="choose a random phrase and print it")
    p.add_argument("--force", action="store_true", help="replace a phrase that is already set")
    json_arg(p)
    p.set_defaults(fn=cmd_init)
