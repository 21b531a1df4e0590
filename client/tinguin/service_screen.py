"""The TINGUIN's screen for a downloaded commerce service: what it is, who certified it, what it may do.

Shown once per service certificate, before the service runs for the first time; the answer is kept
in the preferences (``services.<serial>``), so the same certified service is not asked about again
and a refused one is not run. The service's own words (its title and description) are marked as
not the TINGUIN's; what it *may* do is the certificate's, worded by the TINGUIN; what it can never
do (skip the confirmation, turn evidence off, see the PIN) is said on the screen too.
"""
from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button

from .screens import TrustedScreen
from .widgets import Facts, Section, chrome, marked

NEVER = ("skip this confirmation screen before an order or payment", "turn off the evidence kept of each step",
         "see or keep your PIN (it goes from this screen to your card)")


@dataclass(frozen=True)
class ServiceView:
    """A checked service as the TINGUIN shows it (everything in it was verified before)."""

    name: str
    title: str
    description: str
    shop: str
    certifier: str
    document_sha256: str
    valid_until: str
    steps: tuple[str, ...]
    may: tuple[tuple[str, str], ...]


class ServiceScreen(TrustedScreen[bool]):
    """Allow (y) or refuse (n / escape) a downloaded service."""

    TITLE_TEXT = "downloaded commerce service"
    KEYS = "y allow  n refuse"
    BINDINGS = [Binding("y", "allow", "allow", priority=True), Binding("n", "refuse", "refuse", priority=True),
                Binding("escape", "refuse", "refuse")]

    def __init__(self, view: ServiceView) -> None:
        super().__init__()
        self.view = view

    def body(self) -> ComposeResult:
        v = self.view
        yield Section("A shop offers a commerce service this computer has not run before")
        yield Facts([("service", marked(v.title)), ("name", v.name), ("offered by", v.shop),
                     ("what it says", marked(v.description))], id="service")
        yield Section("Checked here: certified, not revoked, the document is the one certified")
        yield Facts([("certified by", v.certifier), ("certificate valid until", v.valid_until),
                     ("document SHA-256", v.document_sha256), ("steps", " -> ".join(v.steps))], id="checked")
        yield Section("What its certificate allows it (enforced while it runs)")
        yield Facts(list(v.may), id="may")
        yield Section("What no service can do")
        yield Facts([("never", n) for n in NEVER], id="never")
        with Horizontal(classes="buttons"):
            yield Button(chrome("Allow"), id="allow", variant="primary")
            yield Button(chrome("Refuse"), id="refuse", variant="error")

    def action_allow(self) -> None:
        self.dismiss(True)

    def action_refuse(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#allow")
    def _allow(self) -> None:
        self.action_allow()

    @on(Button.Pressed, "#refuse")
    def _refuse(self) -> None:
        self.action_refuse()
