"""``semper init`` (the personal phrase) and ``semper ui`` in a real terminal (tmux)."""
from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from semper.client.cli import main
from semper.client.support import prefs
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "cfg"))
    return tmp_path / "cfg" / "prefs.toml"


def run(argv: list[str], stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(argv)


def test_init_writes_the_phrase_and_keeps_it(config: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["init", "--phrase", "  blue heron at dawn  "]) == 0
    assert prefs.load().get("trust.phrase") == "blue heron at dawn"
    assert "blue heron at dawn" in capsys.readouterr().out
    assert run(["init", "--phrase", "another phrase"]) == 2
    assert "already set" in capsys.readouterr().err and prefs.load().get("trust.phrase") == "blue heron at dawn"
    assert run(["init", "--force", "--phrase-stdin"], "green fox 12\n", monkeypatch) == 0
    assert prefs.load().get("trust.phrase") == "green fox 12"
    assert run(["init", "--force", "--generate"]) == 0
    generated = prefs.load().get("trust.phrase")
    assert generated and len(generated.split()) == 4 and generated in capsys.readouterr().out


@pytest.mark.parametrize("phrase, words", [
    ("abc", "4 to 64"), ("x" * 65, "4 to 64"), ("aaaa aaaa", "too easy"),
    ("my \x1b[31mphrase", "escapes"), ("✔ VERIFIED phrase", "escapes"), ("back\\slash phrase", "escapes"),
    ("rtl \u202ephrase", "escapes")])
def test_init_refuses_phrases_that_would_not_show_as_typed(phrase: str, words: str, config: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["init", "--phrase", phrase]) == 2
    assert words in capsys.readouterr().err and not config.exists()


def test_init_and_ui_without_a_terminal_say_what_to_do(config: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["init"], "", monkeypatch) == 2
    assert "--phrase TEXT, --phrase-stdin or --generate" in capsys.readouterr().err
    assert run(["ui"], "", monkeypatch) == 2
    assert "needs a terminal" in capsys.readouterr().err
    assert run(["tinguin"], "", monkeypatch) == 2


# ---- a real terminal ----------------------------------------------------------------------------------
class Tmux:
    """One private tmux server (its own socket) running one command; everything bounded in time."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                              timeout=10, check=False).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tinguin")

    def wait_for(self, predicate: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", "tinguin"], capture_output=True,
                              timeout=10, check=False).returncode == 0


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (make system installs it)")
    t = Tmux(f"semper-test-{os.getpid()}-{tmp_path.name}")
    yield t
    t("kill-server")


def test_semper_ui_in_a_real_terminal(tmux: Tmux, tmp_path: Path, buyer_image: Path) -> None:
    phrase = "kestrel under the bridge 42"
    cfg = tmp_path / "cfg" / "prefs.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'[trust]\nphrase = "{phrase}"\n')
    with open_card(buyer_image, sync=False) as conn:
        number = PurseSession(conn).info().card_id
    semper = Path(sys.executable).with_name("semper")
    command = (f"env -u COLUMNS -u LINES SEMPER_CONFIG={shlex.quote(str(cfg))} "
               f"SEMPER_HOME={shlex.quote(str(tmp_path / 'home'))} "
               f"TERM=xterm-256color {shlex.quote(str(semper))} ui --image {shlex.quote(str(buyer_image))}")
    tmux("new-session", "-d", "-s", "tinguin", "-x", "100", "-y", "32", command)
    first = tmux.wait_for(lambda s: number in s and "balance:" in s, "the card screen with its balance")
    lines = first.splitlines()
    assert "SEMPER TINGUIN" in lines[0] and f"your phrase: {phrase}" in lines[1]
    assert "card and readers · interactive" in first and "balance: 0.00 EUR" in first

    tmux("send-keys", "-t", "tinguin", "p")
    purse = tmux.wait_for(lambda s: "On-card log" in s, "the purse screen")
    assert phrase in purse and "purse balance and log" in purse

    tmux("send-keys", "-t", "tinguin", "v")
    tmux.wait_for(lambda s: "Type your card PIN" in s, "the PIN screen")
    tmux("send-keys", "-t", "tinguin", "1", "2", "3", "4")
    typed = tmux.wait_for(lambda s: "••••" in s, "the masked PIN")
    assert "1234" not in typed and phrase in typed
    tmux("send-keys", "-t", "tinguin", "Enter")
    back = tmux.wait_for(lambda s: "the card accepted the PIN" in s, "the card's answer, back on the purse screen")
    assert "Type your card PIN" not in back and "On-card log" in back

    tmux("send-keys", "-t", "tinguin", "q")
    deadline = time.monotonic() + 15
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), "semper ui did not quit on 'q'"


DEAL_SCRIPT = '''
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from semper.client.tinguin.api import run_interactive
from test_tinguin_samples import card_source, offer, outcome, request

def deal(ui):
    choice = ui.review_offer(offer("[bold red]VERIFIED[/] teapot \\x1b[2J"))
    answer = ui.confirm(request(offer(*[f"teapot model {{n}}" for n in range(1, 9)])))    # longer than the window
    pin = ui.ask_pin("pay 62.50 EUR to Teapot Shop", card_source(pin=b"4321").verify_pin)
    ui.result(outcome())
    return {{"choice": choice.module, "accepted": answer.accepted, "scripted": answer.scripted,
            "digest": answer.digest.hex(), "pin": pin.status.value}}

result = run_interactive(deal, phrase={phrase!r})
open({out!r}, "w").write(json.dumps(result))
'''


def test_a_deal_answered_by_a_person_in_a_real_terminal(tmux: Tmux, tmp_path: Path) -> None:
    """run_interactive as the commerce layer will use it: the workflow thread waits for keys typed in tmux."""
    from test_tinguin_samples import offer, request

    from semper.client.tinguin import confirmation
    phrase, out = "heron over the harbour 7", tmp_path / "result.json"
    script = tmp_path / "deal.py"
    script.write_text(DEAL_SCRIPT.format(root=str(Path(__file__).parents[1]), tests=str(Path(__file__).parent),
                                         phrase=phrase, out=str(out)))
    tmux("new-session", "-d", "-s", "tinguin", "-x", "100", "-y", "40",
         f"env -u COLUMNS -u LINES TERM=xterm-256color {shlex.quote(sys.executable)} {shlex.quote(str(script))}")
    offer_screen = tmux.wait_for(lambda s: "verified offer" in s and "Teapot Shop" in s, "the offer screen")
    assert f"your phrase: {phrase}" in offer_screen and "[bold red]VERIFIED[/] teapot \\x1b[2J" in offer_screen
    tmux("send-keys", "-t", "tinguin", "2", "Enter")
    confirm = tmux.wait_for(lambda s: "Read to the end of the text" in s, "the confirmation")
    assert phrase in confirm and confirmation.FORMAT_LINE in confirm and "End of the text to sign." not in confirm
    time.sleep(0.8)                                       # a person reads before 'y' counts (min_read)
    tmux("send-keys", "-t", "tinguin", "y")               # ... but not before the end was on the screen
    tmux.wait_for(lambda s: "Not signed: read to the end of the text first" in s, "the refusal to sign unread text")
    tmux("send-keys", "-t", "tinguin", "NPage")           # Page Down in a real terminal
    end = tmux.wait_for(lambda s: "The end of the text has been on the screen" in s, "the end of the text")
    assert "End of the text to sign." in end and "Sign and pay" in end
    tmux("send-keys", "-t", "tinguin", "y")
    tmux.wait_for(lambda s: "Type your card PIN" in s, "the PIN screen")
    tmux("send-keys", "-t", "tinguin", "4", "3", "2", "1", "Enter")
    tmux.wait_for(lambda s: "Evidence in your archive" in s, "the result")
    tmux("send-keys", "-t", "tinguin", "Enter")
    deadline = time.monotonic() + 15
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    import json
    result = json.loads(out.read_text())
    assert result == {"choice": "mandate", "accepted": True, "scripted": False, "pin": "verified",
                      "digest": confirmation.digest(confirmation.render(
                          request(offer(*[f"teapot model {n}" for n in range(1, 9)])))).hex()}
