"""The TINGUIN's building blocks: a frame only it can draw, and widgets that show data literally.

Rules every widget here keeps (and why):

* Text the TINGUIN did not write goes through :class:`Literal` / :func:`lit` (``literal_text``),
  never through a ``str`` a Textual widget might parse as markup (``Static``, ``DataTable`` and
  ``RadioButton`` all parse markup in plain strings).
* Seller text sits in its own cell, quoted, on one line; it can never reach the header or the
  status line, which are docked widgets whose content the app alone computes.
* The header carries the user's personal phrase, which no seller knows; it is the way to tell the
  real TINGUIN from a copy.
"""
from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Input, Static

from semper.client.support import names
from semper.client.support.money import format_amount

from .confirmation import CLOSE, OPEN, STYLES, WARN
from .literal import DEFAULT_LIMIT, literal_text, tokens
from .model import (
    ArchiveView,
    DealOutcome,
    LogLine,
    OutcomeStatus,
    Party,
    PaymentOption,
    ProgressStep,
    PurseView,
    ReaderView,
    StepState,
    Verification,
)

NO_PHRASE = "no personal phrase set: run 'semper init' so you can recognise this window"
HEADER_TITLE = "▌SEMPER TINGUIN ▐ trusted window of this computer"


def lit(text: str, limit: int = DEFAULT_LIMIT, style: str = "") -> Text:
    """Untrusted text as a safe, single-line, plain Rich Text (the only way data reaches the screen)."""
    return literal_text(text, limit, style=style)


def chrome(text: str, style: str = "") -> Text:
    """The TINGUIN's own words: plain Text too, so even they are never parsed as markup."""
    return Text(text, style=style, end="")


def marked(text: str, suspects: Iterable[int] = ()) -> Text:
    """Words the TINGUIN did not write: whole, between ❝ ❞, escapes visible, ``suspects`` highlighted.

    The same marks as in the confirmation text (``confirmation.OPEN``/``CLOSE``), which no other text
    can contain (``literal.tokens`` escapes them), so marked words never pass for the TINGUIN's.
    """
    flagged = set(suspects)
    out = Text(end="")
    out.append(OPEN, STYLES["mark"])
    run, kind = "", "theirs"
    for i, (piece, escaped) in enumerate(tokens(text)):
        now = "escape" if escaped else "suspect" if i in flagged else "theirs"
        if now != kind and run:
            out.append(run, STYLES[kind])
            run = ""
        run, kind = run + piece, now
    if run:
        out.append(run, STYLES[kind])
    out.append(CLOSE, STYLES["mark"])
    return out


def name_rows(label: str, name: str) -> list[tuple[str, str | Text]]:
    """A certified name, its suspicious characters highlighted and listed (names certified before the CA's rule)."""
    found = names.suspects(name)
    rows: list[tuple[str, str | Text]] = [(label, marked(name, (s.index for s in found)))]
    rows += [("look-alike check", chrome(f"{WARN} {s.code}: {s.reason}", STYLES["warn"])) for s in found]
    return rows


class Literal(Static):
    """Untrusted text, shown literally (see ``client.tinguin.literal``)."""

    DEFAULT_CSS = "Literal { height: auto; }"

    def __init__(self, text: str, limit: int = DEFAULT_LIMIT, *, quoted: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        body = lit(text, limit)
        if quoted:
            body = Text("\u201c", end="") + body + Text("\u201d", end="")
        super().__init__(body, id=id, classes=classes, markup=False)
        self.shown = body.plain


class TrustHeader(Static):
    """The top of every TINGUIN screen: the title in reserved glyphs and the user's personal phrase."""

    DEFAULT_CSS = """
    TrustHeader { dock: top; height: 3; padding: 0 1; background: #14213d; color: #ffffff; }
    """

    def __init__(self, phrase: str | None, scripted: bool = False) -> None:
        text = chrome(HEADER_TITLE, "bold")
        if scripted:
            text.append("  SCRIPTED USER: no person is answering", "bold #ffb703")
        text.append("\n")
        if phrase:
            text.append("your phrase: ", "#cfd8e3")
            text.append_text(lit(phrase, 64, style="bold #fca311"))
        else:
            text.append(NO_PHRASE, "bold #ff5d5d")
        text.append("\n")
        text.append("▔" * 200, "#fca311")
        text.no_wrap, text.overflow = True, "crop"
        super().__init__(text, markup=False, id="trust-header")


class StatusLine(Static):
    """The bottom line: the TINGUIN's own state and keys; nothing else can write here."""

    DEFAULT_CSS = "StatusLine { dock: bottom; height: 1; background: #14213d; color: #ffffff; padding: 0 1; }"

    def __init__(self, text: str) -> None:
        super().__init__(chrome("● " + text), markup=False, id="status-line")
        self.text = text

    def set(self, text: str) -> None:
        self.text = text
        self.update(chrome("● " + text))


class Section(Static):
    """A heading inside a screen (the TINGUIN's words)."""

    DEFAULT_CSS = "Section { height: auto; margin: 1 0 0 0; text-style: bold; color: #fca311; }"

    def __init__(self, text: str, id: str | None = None) -> None:
        super().__init__(chrome(text), markup=False, id=id)


class Facts(Static):
    """Label/value lines: labels are the TINGUIN's, values are shown literally."""

    DEFAULT_CSS = "Facts { height: auto; }"

    def __init__(self, rows: Iterable[tuple[str, str | Text]], id: str | None = None, label_width: int = 20) -> None:
        super().__init__(self.build(rows, label_width), markup=False, id=id)

    @staticmethod
    def build(rows: Iterable[tuple[str, str | Text]], label_width: int = 20) -> Text:
        """``str`` values are shown literally; a ``Text`` value is one this module made safe (``marked``,
        ``chrome``)."""
        out = Text(end="")
        for n, (label, value) in enumerate(rows):
            if n:
                out.append("\n")
            out.append(f"{label:>{label_width}}: ", "#9fb3c8")
            out.append_text(value if isinstance(value, Text) else lit(value, 240))
        return out


def _amount(minor: int, currency: int) -> str:
    return format_amount(minor, currency)


class PartyFacts(Facts):
    """A certified party: every field from the verified certificate."""

    def __init__(self, party: Party, id: str | None = None) -> None:
        rows = name_rows("name (certificate)", party.name)
        if party.organisation:
            rows += name_rows("organisation", party.organisation)
        if party.country:
            rows.append(("country", marked(party.country)))
        rows += [("certificate serial", party.serial), ("issued by", party.issuer),
                 ("SHA-256", party.fingerprint), ("valid until", f"{party.valid_until:%Y-%m-%d} UTC")]
        super().__init__(rows, id=id)


class VerificationFacts(Facts):
    """What the client checked about a signed statement."""

    def __init__(self, v: Verification, id: str | None = None) -> None:
        rows = [("signature", "valid (checked on this computer)"),
                ("chain", f"{v.chain_length} certificate(s) up to {v.root}"),
                ("signed at", f"{v.signing_time:%Y-%m-%d %H:%M:%S} UTC, {v.time_source}"),
                ("revocation", "checked against the CA's CRL" if v.revocation_checked else "NOT checked (no CRL)"),
                ("statement SHA-256", v.statement_digest)]
        rows += [("note", n) for n in v.notes]
        super().__init__(rows, id=id)


class SafeTable(DataTable[Text]):
    """A DataTable whose cells are always plain Text (DataTable parses markup in ``str`` cells).

    Not focusable: the keys of a TINGUIN screen must do the same thing wherever the focus was left.
    """

    DEFAULT_CSS = "SafeTable { height: auto; max-height: 16; } SafeTable.whole { max-height: 100000; }"
    can_focus = False

    def __init__(self, columns: Iterable[str], id: str | None = None, whole: dict[int, int] | None = None) -> None:
        """``whole``: column index -> width; those cells show the whole text, marked and wrapped in the column."""
        super().__init__(id=id, zebra_stripes=True, cursor_type="row", show_cursor=False,
                         classes="whole" if whole else None)
        self._columns = list(columns)
        self._whole = dict(whole or {})

    def on_mount(self) -> None:
        for n, c in enumerate(self._columns):
            self.add_column(chrome(c, "bold"), width=self._whole.get(n))

    def fill(self, rows: Iterable[Iterable[str]], limit: int = 60) -> None:
        self.clear()
        for row in rows:
            self.add_row(*(marked(cell) if n in self._whole else lit(cell, limit) for n, cell in enumerate(row)),
                         height=None if self._whole else 1)


class PaymentList(Static):
    """The offer's payment options, chosen with the digit keys; labels are the local modules'."""

    DEFAULT_CSS = "PaymentList { height: auto; }"

    def __init__(self, options: Iterable[PaymentOption], id: str | None = None) -> None:
        self.options = tuple(options)
        self.index = 0
        super().__init__(self._render_options(), markup=False, id=id)

    def _render_options(self) -> Text:
        out = Text(end="")
        for n, opt in enumerate(self.options):
            if n:
                out.append("\n")
            chosen = n == self.index
            out.append(f" {'▶' if chosen else ' '} {n + 1}) ", "bold #52b788" if chosen else "#9fb3c8")
            out.append_text(lit(opt.label, 50, style="bold" if chosen else ""))
            out.append(f"  ({opt.module})", "#9fb3c8")
        if not self.options:
            out.append("no payment option this computer has is accepted by the seller", "bold #ff5d5d")
        return out

    def choose(self, index: int) -> bool:
        if not 0 <= index < len(self.options):
            return False
        self.index = index
        self.update(self._render_options())
        return True

    @property
    def selected(self) -> PaymentOption | None:
        return self.options[self.index] if self.options else None


class StepList(Static):
    """The deal's steps, each with its state; titles and details shown literally."""

    DEFAULT_CSS = "StepList { height: auto; }"
    MARKS = {StepState.PENDING: ("·", "#9fb3c8"), StepState.RUNNING: ("▶", "bold #ffb703"),
             StepState.DONE: ("✔", "bold #52b788"), StepState.FAILED: ("✘", "bold #ff5d5d"),
             StepState.SKIPPED: ("–", "#9fb3c8")}

    def __init__(self, id: str | None = None) -> None:
        super().__init__(chrome("waiting for the first step"), markup=False, id=id)
        self.steps: dict[str, ProgressStep] = {}

    def put(self, step: ProgressStep) -> None:
        self.steps[step.key] = step
        out = Text(end="")
        for n, s in enumerate(self.steps.values()):
            if n:
                out.append("\n")
            mark, style = self.MARKS[s.state]
            out.append(f" {mark} ", style)
            out.append(f"{s.state.value:<8} ", style)
            out.append_text(lit(s.title, 60))
            if s.detail:
                out.append("  ")
                out.append_text(lit(s.detail, 60, style="#9fb3c8"))
        self.update(out)


class PinField(Input):
    """A masked PIN field that never lets its value out: no copy, cut, paste or suggestions.

    :meth:`take` is the only way to read it; it clears the field in the same step.
    """

    BINDINGS = [Binding("ctrl+c,super+c", "nothing", show=False), Binding("ctrl+x", "nothing", show=False),
                Binding("ctrl+v", "nothing", show=False)]

    def __init__(self, max_length: int = 8, id: str | None = None) -> None:
        super().__init__(password=True, restrict=r"[0-9]*", max_length=max_length, id=id,
                         placeholder="PIN (digits)", valid_empty=False)
        self.cursor_blink = False

    def action_nothing(self) -> None:
        """Copy/cut/paste are disabled: a PIN must not reach the clipboard (or come from it)."""

    def action_copy(self) -> None:
        self.action_nothing()

    def action_cut(self) -> None:
        self.action_nothing()

    def action_paste(self) -> None:
        self.action_nothing()

    def take(self) -> bytes:
        """The typed PIN as bytes; the field is empty afterwards."""
        pin = self.value.encode("ascii")
        self.value = ""
        self.cursor_position = 0
        return pin


# ---- own-card panels ------------------------------------------------------------------------------
def reader_rows(views: Iterable[ReaderView]) -> list[tuple[str, str, str, str]]:
    rows = []
    for r in views:
        state = "card present" if r.card_present else "empty"
        if r.problem:
            state += f" ({r.problem})"
        rows.append((r.name, state, ", ".join(r.applets) or "-", "yes" if r.pin_pad else "no"))
    return rows


def purse_rows(p: PurseView) -> list[tuple[str, str]]:
    return [("card number", p.card_id), ("balance", _amount(p.balance, p.currency)),
            ("maximum balance", _amount(p.max_balance, p.currency)),
            ("PIN tries left", str(p.pin_tries)), ("PUK tries left", str(p.puk_tries)),
            ("loads / debits", f"{p.load_counter} / {p.debit_counter}"),
            ("load pending", "yes: finish it with 'semper card load'" if p.load_pending else "no")]


def log_rows(p: PurseView) -> list[tuple[str, str, str, str]]:
    def row(e: LogLine) -> tuple[str, str, str, str]:
        sign = "+" if e.kind == "load" else "-"
        return (e.kind, f"#{e.counter}", sign + _amount(e.amount, p.currency), _amount(e.balance_after, p.currency))
    return [row(e) for e in p.log]


def archive_rows(a: ArchiveView) -> list[tuple[str, str]]:
    return [(deal, str(n)) for deal, n in a.deals]


def archive_facts(a: ArchiveView) -> list[tuple[str, str]]:
    chain = "not checked" if a.chain_ok is None else ("intact" if a.chain_ok else
                                                       f"TAMPERED: {len(a.problems)} problem(s)")
    rows = [("archive", a.path), ("id", a.archive_id), ("entries", str(a.entries)),
            ("last checkpoint", f"entry {a.last_checkpoint}" if a.last_checkpoint else "none yet"),
            ("hash chain", chain)]
    rows += [("problem", p) for p in a.problems[:5]]
    return rows


def outcome_facts(o: DealOutcome) -> list[tuple[str, str]]:
    words = {OutcomeStatus.SATISFIED: "satisfied: you got what was agreed",
             OutcomeStatus.DISPUTE: "dispute: the evidence below supports your claim",
             OutcomeStatus.FAILED: "failed: nothing was agreed or paid",
             OutcomeStatus.CANCELLED: "cancelled by you"}
    rows = [("deal", o.deal_id), ("outcome", words[o.status]), ("summary", o.summary)]
    if o.balance_after is not None and o.currency is not None:
        rows.append(("purse balance now", _amount(o.balance_after, o.currency)))
    return rows


class Body(VerticalScroll):
    """The scrollable middle of a screen, between the header and the status line."""

    DEFAULT_CSS = "Body { height: 1fr; padding: 0 2; }"


def compose_facts(rows: Iterable[tuple[str, str]], id: str | None = None) -> ComposeResult:
    yield Facts(rows, id=id)
