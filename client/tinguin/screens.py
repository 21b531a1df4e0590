"""The TINGUIN's screens, each inside the same trusted frame (phrase header, status line).

Own-card screens (card and readers, purse and log, archive) read through the app's sources in
worker threads. Deal screens (offer, confirmation, PIN, progress, result) are pushed by the
:class:`~client.tinguin.api.TrustedUI` implementations and *dismiss* with the user's answer.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Static

from semper.client.support.money import format_amount
from semper.hardware import errors as hw_errors

from . import confirmation
from .model import (
    ArchiveView,
    Confirmation,
    ConfirmationRequest,
    DealOutcome,
    PaymentOption,
    PinOutcome,
    PinStatus,
    ProgressStep,
    PurseView,
    ReaderView,
    VerifiedOffer,
)
from .widgets import (
    Body,
    Facts,
    PartyFacts,
    PaymentList,
    PinField,
    SafeTable,
    Section,
    StatusLine,
    StepList,
    TrustHeader,
    VerificationFacts,
    archive_facts,
    archive_rows,
    chrome,
    log_rows,
    marked,
    outcome_facts,
    purse_rows,
    reader_rows,
)

if TYPE_CHECKING:
    from rich.text import Text

    from .app import TinguinApp

ResultT = TypeVar("ResultT")


class TrustedScreen(Screen[ResultT]):
    """Every TINGUIN screen: header with the phrase on top, the body, the status line at the bottom."""

    TITLE_TEXT = "TINGUIN"
    KEYS = ""

    @property
    def tinguin(self) -> TinguinApp:
        return cast("TinguinApp", self.app)

    def compose(self) -> ComposeResult:
        yield TrustHeader(self.tinguin.phrase, self.tinguin.scripted)
        with Body():
            yield from self.body()
        yield from self.below()
        yield StatusLine(self.status_text())

    def body(self) -> ComposeResult:
        yield from ()

    def below(self) -> ComposeResult:
        """Widgets between the scrolling body and the status line: always on the screen."""
        yield from ()

    def status_text(self) -> str:
        mode = "SCRIPTED USER" if self.tinguin.scripted else "interactive"
        return " · ".join(x for x in (self.TITLE_TEXT, mode, self.KEYS) if x)


# ---- own card ------------------------------------------------------------------------------------
class OwnCardScreen(TrustedScreen[None]):
    """A screen about the user's own card or archive, reloaded whenever it is shown."""

    BINDINGS = [Binding("c", "app.show('card')", "card"), Binding("p", "app.show('purse')", "purse"),
                Binding("a", "app.show('archive')", "archive"), Binding("v", "app.check_pin", "check PIN"),
                Binding("r", "reload", "reload"), Binding("q", "app.quit", "quit")]
    KEYS = "c card  p purse  a archive  v check PIN  r reload  q quit"

    def on_screen_resume(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._load, thread=True, exclusive=True, group="load", exit_on_error=False)

    def _load(self) -> None:
        try:
            data: Any = self.fetch()
            error = ""
        except Exception as e:             # shown to the user, never a crash of the trusted window
            data, error = None, (str(e) or type(e).__name__)
        self.app.call_from_thread(self.show, data, error)

    def fetch(self) -> Any:
        raise NotImplementedError

    def show(self, data: Any, error: str) -> None:
        raise NotImplementedError


class CardScreen(OwnCardScreen):
    TITLE_TEXT = "card and readers"

    def on_mount(self) -> None:
        """Readers come and go and cards are pulled: with ``refresh`` set, the screen follows them."""
        if self.tinguin.refresh_seconds > 0:
            self.set_interval(self.tinguin.refresh_seconds, self._tick)

    def _tick(self) -> None:
        if self.is_current:
            self.action_reload()

    def body(self) -> ComposeResult:
        yield Section("Readers")
        yield SafeTable(["reader", "state", "applets", "PIN pad"], id="readers")
        yield Section("Your card")
        yield Facts([("status", "reading the card…")], id="card-facts")

    def fetch(self) -> tuple[list[ReaderView], PurseView | None, str]:
        source = self.tinguin.card
        if source is None:
            return [], None, "no card source: start with --reader or --image"
        try:
            readers = source.readers()
        except hw_errors.HardwareError as e:
            readers = [ReaderView("(PC/SC)", False, problem=str(e))]
        try:
            return readers, source.purse(), ""
        except hw_errors.HardwareError as e:
            return readers, None, str(e)

    def show(self, data: Any, error: str) -> None:
        readers, purse, problem = data if data is not None else ([], None, error)
        self.query_one("#readers", SafeTable).fill(reader_rows(readers))
        facts = purse_rows(purse) if purse is not None else [("status", problem or "no purse card found")]
        self.query_one("#card-facts", Facts).update(Facts.build(facts))


class PurseScreen(OwnCardScreen):
    TITLE_TEXT = "purse balance and log"

    def body(self) -> ComposeResult:
        yield Section("Balance")
        yield Facts([("status", "reading the card…")], id="purse-facts")
        yield Section("On-card log (newest first; the card signs every record)")
        yield SafeTable(["kind", "counter", "amount", "balance after"], id="purse-log")

    def fetch(self) -> PurseView:
        if self.tinguin.card is None:
            raise hw_errors.ReaderError("no card source: start with --reader or --image")
        return self.tinguin.card.purse()

    def show(self, data: Any, error: str) -> None:
        if data is None:
            self.query_one("#purse-facts", Facts).update(Facts.build([("status", error)]))
            return
        p = cast(PurseView, data)
        self.query_one("#purse-facts", Facts).update(Facts.build(purse_rows(p)[:3]))
        self.query_one("#purse-log", SafeTable).fill(log_rows(p))


class ArchiveScreen(OwnCardScreen):
    TITLE_TEXT = "evidence archive"

    def body(self) -> ComposeResult:
        yield Section("Archive")
        yield Facts([("status", "reading the archive…")], id="archive-facts")
        yield Section("Deals (ids as recorded, shown literally)")
        yield SafeTable(["deal", "entries"], id="archive-deals")

    def fetch(self) -> ArchiveView:
        from .sources import archive_view
        if self.tinguin.archive is None:
            raise FileNotFoundError("no archive given")
        return archive_view(self.tinguin.archive)

    def show(self, data: Any, error: str) -> None:
        if data is None:
            self.query_one("#archive-facts", Facts).update(Facts.build([("status", error)]))
            return
        a = cast(ArchiveView, data)
        self.query_one("#archive-facts", Facts).update(Facts.build(archive_facts(a)))
        self.query_one("#archive-deals", SafeTable).fill(archive_rows(a))


# ---- deal screens -------------------------------------------------------------------------------
class OfferScreen(TrustedScreen[PaymentOption | None]):
    """The verified offer; the user picks a payment option (digit keys) and continues, or declines."""

    TITLE_TEXT = "verified offer"
    KEYS = "1-9 choose payment  enter continue  escape decline"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "enter", "continue", priority=True), Binding("escape", "decline", "decline"),
        *(Binding(str(n), f"choose({n - 1})", show=False, priority=True) for n in range(1, 10))]
    # the digits are priority bindings like Enter: otherwise "2" typed just before Enter would reach the
    # screen after Enter (priority keys are handled first) and the payment would not be the one chosen

    def __init__(self, offer: VerifiedOffer) -> None:
        super().__init__()
        self.offer = offer

    def body(self) -> ComposeResult:
        o = self.offer
        yield Section("Seller, as named by its verified certificate")
        yield PartyFacts(o.seller, id="seller")
        yield Section("What this computer checked")
        yield VerificationFacts(o.verification, id="verification")
        yield Section("Items: the seller's words, shown whole between \u275d \u275e")
        yield SafeTable(["#", "description", "qty", "unit price", "line total"], id="items", whole={1: 42})
        facts: list[tuple[str, str | Text]] = [("offer", marked(o.offer_id)),
                                               ("total (recomputed)", format_amount(o.total, o.currency))]
        if o.valid_until:
            facts.append(("valid until", f"{o.valid_until:%Y-%m-%d %H:%M} UTC"))
        yield Facts(facts, id="offer-total")
        yield Section("Pay with (press its number)")
        yield PaymentList(o.payment_options, id="payment")
        with Horizontal(classes="buttons"):
            yield Button(chrome("Continue"), id="continue", variant="primary")
            yield Button(chrome("Decline"), id="decline", variant="error")

    def on_mount(self) -> None:
        self.query_one("#items", SafeTable).fill(
            [(str(n), i.description, str(i.quantity), format_amount(i.unit_price, self.offer.currency),
              format_amount(i.total, self.offer.currency)) for n, i in enumerate(self.offer.items, 1)])
        self.query_one("#continue", Button).focus()

    def action_choose(self, index: int) -> None:
        self.query_one(PaymentList).choose(index)

    def action_enter(self) -> None:
        """Enter presses the focused button (Decline stays Decline); otherwise it continues."""
        focused = self.focused
        if isinstance(focused, Button) and focused.id == "decline":
            self.action_decline()
        else:
            self.action_continue()

    def action_continue(self) -> None:
        choice = self.query_one(PaymentList).selected
        if choice is not None:
            self.dismiss(choice)

    def action_decline(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#continue")
    def _continue(self) -> None:
        self.action_continue()

    @on(Button.Pressed, "#decline")
    def _decline(self) -> None:
        self.action_decline()


class ConfirmScreen(TrustedScreen[Confirmation]):
    """The exact text to be signed; accepting returns it with its digest (what-you-see-is-what-you-sign).

    The text is shown whole (``confirmation.render`` cuts nothing) in the scrolling body, and 'y'
    counts only once the end of the text has been on the screen: a person who signs has had every
    line of it in front of them (arrows, Page Down, End or the mouse scroll; the line under the body
    says how far there is to go). 'y' typed before the text could be read (``min_read``) is ignored too.
    """

    TITLE_TEXT = "confirm"
    KEYS = "↓ PgDn End read on  y sign and pay  n / escape decline"
    BINDINGS = [Binding("y", "accept", "accept"), Binding("n,escape", "decline", "decline"),
                Binding("space", "page_down", show=False)]

    def __init__(self, request: ConfirmationRequest) -> None:
        super().__init__()
        self.request = request
        self.text = confirmation.render(request)
        self.end_seen = False

    def body(self) -> ComposeResult:
        yield Section("Read what you sign: all of it. Only what this computer verified is shown.")
        shown = confirmation.styled(self.request)
        assert shown.plain == self.text                          # the screen holds exactly the signed text
        yield Static(shown, markup=False, id="confirmation-text")
        with Horizontal(classes="buttons"):
            yield Button(chrome("Sign and pay (y)"), id="accept", variant="success")
            yield Button(chrome("Decline (n)"), id="decline", variant="error")

    def below(self) -> ComposeResult:
        yield Static(chrome(""), markup=False, id="confirm-message")

    def on_mount(self) -> None:
        self.query_one("#decline",
                       Button).focus(scroll_visible=False)   # a stray Enter declines; the text starts at its top
        self.shown_at = time.monotonic()
        self.watch(self.query_one(Body), "scroll_y", self._scrolled, init=False)
        self.call_after_refresh(self._check_end)

    def on_resize(self) -> None:
        self.call_after_refresh(self._check_end)

    def _scrolled(self, _old: float, _new: float) -> None:
        self._check_end()

    def _lines_below(self) -> int:
        """Rows of the confirmation text still below the visible part of the body (0: its end was shown)."""
        body, text = self.query_one(Body), self.query_one("#confirmation-text", Static)
        last = text.virtual_region.bottom - text.styles.gutter.bottom - 1     # the row after "End of the text to sign."
        return max(0, last - (round(body.scroll_y) + body.scrollable_content_region.height))

    def _too_narrow(self) -> int:
        """Columns missing for the text's longest marked line to show unbroken (0: the window is wide enough)."""
        room = self.query_one("#confirmation-text", Static).content_region.width
        return max(0, confirmation.WIDTH - 1 - room) if room else 0

    def _check_end(self) -> None:
        if not self.is_mounted:
            return
        if not self.end_seen and self._lines_below() == 0 and self.size.height > 0:
            self.end_seen = True
        if self._too_narrow():
            self._say(f"Widen this window by {self._too_narrow()} column(s) to sign: the text's marked lines "
                      "would break.", "bold #ffb703")
        elif self.end_seen:
            self._say(f"The end of the text has been on the screen: y to {self.request.action.value}, n to decline.")
        else:
            self._say("Read to the end of the text (↓, Page Down, End): y signs only after its last line "
                      "has been on the screen.")

    def _say(self, text: str, style: str = "bold") -> None:
        self.query_one("#confirm-message", Static).update(chrome(text, style))

    def action_page_down(self) -> None:
        self.query_one(Body).scroll_page_down()

    def _answer(self, accepted: bool) -> None:
        if accepted:
            self._check_end()
            if self._too_narrow():
                self._say(f"Not signed: widen this window by {self._too_narrow()} column(s); the text's marked "
                          "lines would break.", "bold #ffb703")
                return
            if not self.end_seen:
                self._say(f"Not signed: read to the end of the text first (↓, Page Down, End); "
                          f"{self._lines_below()} more line(s) below.", "bold #ffb703")
                return
            if time.monotonic() - self.shown_at < self.tinguin.min_read:
                # a 'y' that arrives as the text appears was typed before anyone could read it
                self._say("Take a moment to read what you sign, then press y again.", "bold #ffb703")
                return
        self.dismiss(Confirmation(accepted, self.text, confirmation.digest(self.text), self.tinguin.scripted))

    def action_accept(self) -> None:
        self._answer(True)

    def action_decline(self) -> None:
        self._answer(False)

    @on(Button.Pressed, "#accept")
    def _accept_button(self) -> None:
        self._answer(True)

    @on(Button.Pressed, "#decline")
    def _decline_button(self) -> None:
        self._answer(False)


PAD_TEXT = "Enter the PIN on the reader's PIN pad now. This computer never sees it."
TYPE_TEXT = "Type your card PIN and press Enter. It goes to the card and nowhere else."


class PinScreen(TrustedScreen[PinOutcome]):
    """PIN entry: masked, handed straight to ``deliver`` (the card session); or the reader's PIN pad."""

    TITLE_TEXT = "PIN"
    KEYS = "enter send to the card  escape cancel"
    BINDINGS = [Binding("escape", "cancel", "cancel")]
    MIN_LENGTH = 4

    def __init__(self, purpose: str, deliver: Callable[[bytes], None], pad: Callable[[], None] | None = None,
                 max_length: int = 8) -> None:
        super().__init__()
        self.purpose = purpose
        self._deliver = deliver
        self._pad = pad
        self._max_length = max_length
        self.busy = False

    def body(self) -> ComposeResult:
        yield Section("Your PIN is asked for")
        yield Facts([("for", self.purpose)], id="pin-purpose")
        if self._pad is not None:
            yield Static(chrome(PAD_TEXT, "bold"), markup=False, id="pin-instructions")
        else:
            yield Static(chrome(TYPE_TEXT), markup=False, id="pin-instructions")
            yield PinField(self._max_length, id="pin")
        yield Static(chrome(""), markup=False, id="pin-message")

    def on_mount(self) -> None:
        if self._pad is not None:
            self.busy = True
            self.run_worker(self._pad_flow(), exit_on_error=False)
        else:
            self.query_one(PinField).focus()

    def _say(self, text: str, style: str = "") -> None:
        self.query_one("#pin-message", Static).update(chrome(text, style))

    async def _pad_flow(self) -> None:
        assert self._pad is not None
        outcome, _ = await self._outcome(self._pad)
        self.dismiss(outcome)

    async def _outcome(self, call: Callable[[], None]) -> tuple[PinOutcome, bool]:
        """Run one card call off the UI loop; the outcome, and whether the user may simply try again."""
        try:
            await asyncio.to_thread(call)
        except hw_errors.WrongPinError as e:
            if e.tries_left == 0:
                return PinOutcome(PinStatus.BLOCKED, str(e)), False
            return PinOutcome(PinStatus.FAILED, str(e)), True
        except hw_errors.PinBlockedError as e:
            return PinOutcome(PinStatus.BLOCKED, str(e)), False
        except hw_errors.HardwareError as e:
            return PinOutcome(PinStatus.FAILED, str(e)), False
        return PinOutcome(PinStatus.VERIFIED), False

    @on(PinField.Submitted)
    async def _submitted(self, event: PinField.Submitted) -> None:
        event.stop()
        field = self.query_one(PinField)
        pin = field.take()
        if self.busy:
            return
        if len(pin) < self.MIN_LENGTH:
            self._say(f"a PIN has at least {self.MIN_LENGTH} digits; nothing was sent to the card", "#ff5d5d")
            return
        self.busy = True
        field.disabled = True
        self._say("checking with the card…")
        outcome, again = await self._outcome(functools.partial(self._deliver, pin))
        del pin
        self.busy = False
        field.disabled = False
        if again:
            self._say(outcome.message + "; try again or press escape", "bold #ff5d5d")
            field.focus()
            return
        self.dismiss(outcome)

    def action_cancel(self) -> None:
        """Cancel, unless the card is already checking a PIN (its answer decides; the pad has its own cancel)."""
        if self.busy:
            return
        if self._pad is None:
            self.query_one(PinField).take()
        self.dismiss(PinOutcome(PinStatus.CANCELLED, "cancelled by the user"))


class ProgressScreen(TrustedScreen[None]):
    """The deal, step by step, as the commerce layer reports it."""

    TITLE_TEXT = "deal progress"

    def __init__(self) -> None:
        super().__init__()
        self._early: list[ProgressStep] = []

    def body(self) -> ComposeResult:
        yield Section("Deal progress")
        yield StepList(id="steps")

    def on_mount(self) -> None:
        for step in self._early:
            self.query_one(StepList).put(step)
        self._early.clear()

    def put(self, step: ProgressStep) -> None:
        if self.is_mounted:
            self.query_one(StepList).put(step)
        else:
            self._early.append(step)

    @property
    def steps(self) -> dict[str, ProgressStep]:
        return dict(self.query_one(StepList).steps) if self.is_mounted else {s.key: s for s in self._early}


class ResultScreen(TrustedScreen[None]):
    """How the deal ended and the evidence it left."""

    TITLE_TEXT = "result"
    KEYS = "enter / escape done"
    BINDINGS = [Binding("enter,escape", "done", "done", priority=True)]

    def __init__(self, outcome: DealOutcome) -> None:
        super().__init__()
        self.outcome = outcome

    def body(self) -> ComposeResult:
        yield Section("Result")
        yield Facts(outcome_facts(self.outcome), id="outcome")
        yield Section("Evidence in your archive")
        yield SafeTable(["kind", "description", "entry", "SHA-256"], id="evidence")

    def on_mount(self) -> None:
        self.query_one("#evidence", SafeTable).fill(
            [(e.kind, e.description, "-" if e.archive_index is None else str(e.archive_index), e.digest[:16] + "…")
             for e in self.outcome.evidence], limit=40)

    def action_done(self) -> None:
        self.dismiss(None)


__all__ = [
    "ArchiveScreen",
    "CardScreen",
    "ConfirmScreen",
    "OfferScreen",
    "PinScreen",
    "ProgressScreen",
    "PurseScreen",
    "ResultScreen",
    "StatusLine",
    "TrustedScreen",
]
