"""What the commerce layer calls: the ``TrustedUI`` protocol, and two implementations of it.

Why a protocol: the commerce layer must not know whether a person or a script answers, only that
every security-critical question goes through the TINGUIN's screens. Both implementations drive
the *same* :class:`~client.tinguin.app.TinguinApp` screens:

* :class:`TextualUI` (through :func:`run_interactive`): the app owns the terminal in the main
  thread; the workflow runs in a thread of its own and blocks on each question until the person
  answers on screen.
* :class:`ScriptedUI` (through :func:`run_scripted`): for runs without a terminal (CI, ``semper demo``
  with standard input not a terminal). The app runs headless and a scripted user presses the same
  keys through Textual's Pilot: it types the PIN into the same masked field, presses ``y`` on the
  same confirmation. It says so: on every screen's header, through ``say``, and in
  ``Confirmation.scripted``.

The PIN never comes back to the caller: :meth:`TrustedUI.ask_pin` takes ``deliver``, a function
that hands the bytes to the card session (``PurseSession.verify_pin``, ``PivSigner.verify_pin``),
and with a PIN-pad reader ``pad`` (``verify_pin_on_pad``), in which case no PIN is typed here.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from textual.pilot import Pilot

from semper.hardware.errors import SemperError

from .app import TinguinApp
from .model import (
    Confirmation,
    ConfirmationRequest,
    DealOutcome,
    PaymentOption,
    PinOutcome,
    PinStatus,
    ProgressStep,
    VerifiedOffer,
)
from .screens import ConfirmScreen, OfferScreen, PinScreen, ResultScreen
from .service_screen import ServiceScreen, ServiceView
from .sources import CardSource
from .textshot import screen_text

T = TypeVar("T")


class TinguinClosed(SemperError):
    """The TINGUIN window went away before the user answered: treat it as 'declined'."""

    http_status = 503
    code = "unavailable"


@runtime_checkable
class TrustedUI(Protocol):
    """Every security-critical input and output of a deal. Each call blocks until it is answered."""

    def review_offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        """Show the verified offer; the payment option the user chose, or None when they declined."""
        ...

    def confirm(self, request: ConfirmationRequest) -> Confirmation:
        """Show the exact confirmation text; sign ``Confirmation.digest`` only when ``accepted``."""
        ...

    def ask_pin(self, purpose: str, deliver: Callable[[bytes], None], *,
                pad: Callable[[], None] | None = None) -> PinOutcome:
        """Ask for the PIN and hand it to ``deliver`` (or let the reader's ``pad`` take it)."""
        ...

    def progress(self, step: ProgressStep) -> None:
        """Show a step of the deal (same ``key`` updates the line)."""
        ...

    def result(self, outcome: DealOutcome) -> None:
        """Show how the deal ended, with its evidence; returns when the user has seen it."""
        ...


def pin_route(session: Any) -> tuple[Callable[[bytes], None], Callable[[], None] | None]:
    """``(deliver, pad)`` for a card session: straight to its VERIFY, or to the reader's PIN pad."""
    has_pad = getattr(session, "has_pin_pad", None)
    pad = session.verify_pin_on_pad if callable(has_pad) and has_pad() else None
    return session.verify_pin, pad


class _AppUI:
    """Runs each question on the app's event loop and waits for the answer in the caller's thread."""

    POLL = 0.2

    def __init__(self, app: TinguinApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    def _closed(self) -> bool:
        return self.app.return_code is not None or self.loop.is_closed() or not self.loop.is_running()

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._closed():
            raise TinguinClosed("the TINGUIN is not open: nothing can be confirmed")

        async def call() -> T:
            context = getattr(self.app, "_context", None)
            with context() if context is not None else contextlib.nullcontext():
                return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        while True:
            try:
                return future.result(timeout=self.POLL)
            except concurrent.futures.CancelledError:
                raise TinguinClosed("the TINGUIN was closed before you answered: nothing was confirmed") from None
            except concurrent.futures.TimeoutError:
                if self._closed():
                    future.cancel()
                    raise TinguinClosed("the TINGUIN was closed before you answered: nothing was confirmed") from None

    # the questions, as coroutines on the app's loop (ScriptedUI adds its key presses to them)
    async def _offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        return await self.app.open(OfferScreen(offer))

    async def _confirm(self, request: ConfirmationRequest) -> Confirmation:
        return await self.app.open(ConfirmScreen(request))

    async def _pin(self, purpose: str, deliver: Callable[[bytes], None], pad: Callable[[], None] | None
                   ) -> PinOutcome:
        return await self.app.open(PinScreen(purpose, deliver, pad))

    async def _result(self, outcome: DealOutcome) -> None:
        await self.app.open(ResultScreen(outcome))

    async def _progress(self, step: ProgressStep) -> None:
        self.app.show_progress(step)

    async def _service(self, view: ServiceView) -> bool:
        allowed = await self.app.open(ServiceScreen(view))
        return bool(allowed)

    # TrustedUI
    def review_offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        return self._run(lambda: self._offer(offer))

    def confirm(self, request: ConfirmationRequest) -> Confirmation:
        return self._run(lambda: self._confirm(request))

    def ask_pin(self, purpose: str, deliver: Callable[[bytes], None], *,
                pad: Callable[[], None] | None = None) -> PinOutcome:
        return self._run(lambda: self._pin(purpose, deliver, pad))

    def progress(self, step: ProgressStep) -> None:
        self._run(lambda: self._progress(step))

    def result(self, outcome: DealOutcome) -> None:
        self._run(lambda: self._result(outcome))

    def review_service(self, view: ServiceView) -> bool:
        """A downloaded service and what it may do; True when the user allows it (optional in a TrustedUI:
        one without it runs no downloaded service)."""
        return self._run(lambda: self._service(view))


class TextualUI(_AppUI):
    """A person answers in the terminal (see :func:`run_interactive`)."""


@dataclass(frozen=True)
class Script:
    """What the scripted user does on each screen.

    ``payment``: the module to choose on the offer (default: the first option); ``pin``: the digits it
    types (None: it cancels PIN requests, and after a wrong PIN it cancels rather than guess again).
    """

    accept_offer: bool = True
    payment: str | None = None
    accept: bool = True
    pin: str | None = None


class ScriptedUI(_AppUI):
    """A scripted user on the same screens, pressing keys through Textual's Pilot (and saying so)."""

    def __init__(self, app: TinguinApp, loop: asyncio.AbstractEventLoop, pilot: Pilot[Any], script: Script,
                 say: Callable[[str], None]) -> None:
        super().__init__(app, loop)
        self.pilot = pilot
        self.script = script
        self.say = say
        self.seen: list[str] = []              # the text of every screen the scripted user answered

    async def _look(self) -> None:
        await self.pilot.pause()
        self.seen.append(screen_text(self.app))

    async def _offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        future = self.app.open(OfferScreen(offer))
        await self._look()
        if not self.script.accept_offer:
            self.say("scripted user: declined the offer")
            await self.pilot.press("escape")
            return await future
        modules = [o.module for o in offer.payment_options]
        if self.script.payment is not None:
            if self.script.payment not in modules:
                self.say(f"scripted user: the offer does not accept {self.script.payment}; declined")
                await self.pilot.press("escape")
                return await future
            await self.pilot.press(str(modules.index(self.script.payment) + 1))
        await self.pilot.press("enter")
        choice = await future
        self.say(f"scripted user: chose to pay with {choice.module if choice else 'nothing'}")
        return choice

    async def _confirm(self, request: ConfirmationRequest) -> Confirmation:
        future = self.app.open(ConfirmScreen(request))
        await self._look()
        await asyncio.sleep(self.app.min_read)               # it "reads" like a person must
        await self.pilot.press("end")                         # ... to the end of the text, as a person must
        await self.pilot.pause()
        await self.pilot.press("y" if self.script.accept else "n")
        answer = await future
        self.say(f"scripted user: {'accepted' if answer.accepted else 'declined'} the confirmation "
                 f"(SHA-256 of the shown text {answer.digest.hex()[:16]}…)")
        return answer

    async def _pin(self, purpose: str, deliver: Callable[[bytes], None], pad: Callable[[], None] | None
                   ) -> PinOutcome:
        screen = PinScreen(purpose, deliver, pad)
        future = self.app.open(screen)
        await self._look()
        if pad is not None:
            self.say("scripted user: the reader's PIN pad takes the PIN")
        elif self.script.pin is None:
            await self.pilot.press("escape")
        else:
            await self.pilot.press(*self.script.pin, "enter")
            while not future.done():                      # a wrong PIN leaves the screen open: give up
                await asyncio.sleep(0.02)
                if not screen.busy and not future.done() and "wrong PIN" in screen_text(self.app):
                    await self.pilot.press("escape")
        outcome = await future
        self.say(f"scripted user: PIN entry {outcome.status.value}"
                 + (f" ({outcome.message})" if outcome.message and outcome.status is not PinStatus.VERIFIED else ""))
        return outcome

    async def _service(self, view: ServiceView) -> bool:
        future = self.app.open(ServiceScreen(view))
        await self._look()
        await self.pilot.press("y" if self.script.accept else "n")
        answer = bool(await future)
        self.say(f"scripted user: {'allowed' if answer else 'refused'} the service {view.name!r}")
        return answer

    async def _result(self, outcome: DealOutcome) -> None:
        future = self.app.open(ResultScreen(outcome))
        await self._look()
        self.say(f"scripted user: read the result ({outcome.status.value})")
        await self.pilot.press("enter")
        await future


# ---- running a deal --------------------------------------------------------------------------------
def load_phrase() -> str | None:
    """The user's personal phrase from the preferences (PrefsError, naming the key, when they are broken)."""
    from semper.client.support import prefs
    return prefs.load().get("trust.phrase")


_UNSET: Any = object()


def run_interactive(workflow: Callable[[TrustedUI], T], *, phrase: str | None = _UNSET,
                    card: CardSource | None = None, archive: Path | None = None, join_timeout: float = 60.0) -> T:
    """Open the TINGUIN in this terminal and run ``workflow(ui)`` in a thread until it returns."""
    app = TinguinApp(phrase=load_phrase() if phrase is _UNSET else phrase, card=card, archive=archive, start=None)
    box: dict[str, Any] = {}

    def body(loop: asyncio.AbstractEventLoop) -> None:
        try:
            box["value"] = workflow(TextualUI(app, loop))
        except BaseException as e:          # re-raised in the caller's thread below
            box["error"] = e
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(app.exit)

    def start() -> None:
        thread = threading.Thread(target=body, args=(asyncio.get_running_loop(),), name="tinguin-workflow",
                                  daemon=True)
        box["thread"] = thread
        thread.start()

    app.ready_hook = start
    app.run()
    thread = box.get("thread")
    if thread is not None:
        thread.join(join_timeout)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TinguinClosed("the TINGUIN was closed before the deal finished: nothing more was confirmed")
    return box["value"]


def run_scripted(workflow: Callable[[TrustedUI], T], *, script: Script = Script(), phrase: str | None = _UNSET,
                 say: Callable[[str], None] | None = None, size: tuple[int, int] = (100, 40),
                 timeout: float = 300.0, min_read: float | None = None) -> T:
    """Run ``workflow(ui)`` with a scripted user answering the TINGUIN's screens (no terminal needed).

    ``min_read``: seconds a confirmation must be on screen before 'y' counts, which the scripted user waits
    out; None keeps the TINGUIN's own (``TinguinApp``). A test knob: the in-process tests that confirm many
    deals pass 0 so as not to spend most of their time waiting; the rule itself is tested on its own screen
    (tests/test_tinguin_screens.py), and every command keeps the default.
    """
    tell = say or (lambda line: print(line, file=sys.stderr, flush=True))
    chosen = load_phrase() if phrase is _UNSET else phrase

    async def main() -> T:
        app = TinguinApp(phrase=chosen, scripted=True, start=None)
        if min_read is not None:
            app.min_read = min_read
        async with app.run_test(headless=True, size=size, notifications=False) as pilot:
            ui = ScriptedUI(app, asyncio.get_running_loop(), pilot, script, tell)
            tell("TINGUIN: no person is answering; a scripted user goes through the same screens")
            return await asyncio.wait_for(asyncio.to_thread(workflow, ui), timeout)

    return asyncio.run(main())


def run_deal(workflow: Callable[[TrustedUI], T], *, interactive: bool | None = None, script: Script = Script(),
             phrase: str | None = _UNSET, say: Callable[[str], None] | None = None) -> T:
    """Interactive in a terminal; otherwise a scripted user, which says so."""
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        return run_interactive(workflow, phrase=phrase)
    return run_scripted(workflow, script=script, phrase=phrase, say=say)


__all__ = [
    "Script",
    "ScriptedUI",
    "TextualUI",
    "TinguinClosed",
    "TrustedUI",
    "load_phrase",
    "pin_route",
    "run_deal",
    "run_interactive",
    "run_scripted",
]
