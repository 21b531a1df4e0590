"""Preferences: where the file is, what it may hold, and errors that name the key."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from semper.client.cli import main
from semper.client.support import prefs
from semper.client.support.prefs import PrefsError


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "cfg"))
    return tmp_path / "cfg" / "prefs.toml"


def test_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Path) -> None:
    assert prefs.prefs_path() == config
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "mine.toml"))
    assert prefs.prefs_path() == tmp_path / "mine.toml"
    monkeypatch.delenv("SEMPER_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert prefs.prefs_path() == tmp_path / "xdg" / "semper" / "prefs.toml"


def test_missing_file_is_empty_and_set_round_trips(config: Path) -> None:
    assert prefs.load().values == {}
    prefs.set_value("servers.ca", "https://127.0.0.1:8443/")
    prefs.set_value("signer.kind", "token")
    prefs.set_value("signer.token", "alice")
    prefs.set_value("trust.phrase", "blue heron at dawn")
    prefs.set_value("payment.default_module", "card_purse")
    p = prefs.load()
    assert p.values == {"servers.ca": "https://127.0.0.1:8443", "signer.kind": "token", "signer.token": "alice",
                        "trust.phrase": "blue heron at dawn", "payment.default_module": "card-purse"}
    assert p.get("servers.bank") is None
    assert "[servers]" in config.read_text()
    prefs.unset("signer.token")
    assert "signer.token" not in prefs.load().values


def test_comments_survive_a_set(config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("# my servers\n[servers]\nca = \"https://127.0.0.1:1\"  # the test CA\n")
    prefs.set_value("servers.bank", "https://127.0.0.1:2")
    text = config.read_text()
    assert "# my servers" in text and "# the test CA" in text and "bank" in text


@pytest.mark.parametrize("key, value, words", [
    ("servers.ca", "http://127.0.0.1:8443", "https"),
    ("servers.bank", "https://", "host"),
    ("servers.ttp", "https://127.0.0.1:99999", "port"),
    ("servers.shop", "https://u@shop.example", "plain"),
    ("signer.kind", "usb-stick", "card"),
    ("signer.token", "x" * 40, "32"),
    ("trust.phrase", "abc", "4 to 64"),
    ("trust.phrase", "nice\x1b[31m", "printable"),
    ("payment.default_module", "Card Purse!", "lower-case"),
])
def test_bad_values_name_the_key(key: str, value: str, words: str, config: Path) -> None:
    with pytest.raises(PrefsError) as e:
        prefs.set_value(key, value)
    assert e.value.key == key and key in str(e.value) and words in str(e.value)
    assert not config.exists()                                     # nothing written


def test_unknown_keys_are_refused_with_a_suggestion(config: Path) -> None:
    with pytest.raises(PrefsError, match="did you mean 'servers.bank'") as e:
        prefs.set_value("servers.bnak", "https://127.0.0.1:1")
    assert e.value.key == "servers.bnak"
    config.parent.mkdir(parents=True)
    config.write_text('[servers]\nca = "https://127.0.0.1:1"\nbnak = "https://x"\n')
    with pytest.raises(PrefsError, match="servers.bnak"):
        prefs.load()
    config.write_text('colour = "blue"\n')
    with pytest.raises(PrefsError, match="'colour'"):
        prefs.load()
    config.write_text('servers = "https://x"\n')
    with pytest.raises(PrefsError, match=r"\[servers\]"):
        prefs.load()
    config.write_text('[signer]\nkind = 3\n')
    with pytest.raises(PrefsError, match="signer.kind must be a string"):
        prefs.load()
    config.write_text('[servers\nca = ')
    with pytest.raises(PrefsError, match="not valid TOML"):
        prefs.load()
    with pytest.raises(PrefsError, match="not valid TOML"):                # a broken file is not overwritten
        prefs.set_value("servers.ca", "https://127.0.0.1:1")


def test_cli(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["prefs", "set", "servers.ca", "https://127.0.0.1:8443"]) == 0
    assert main(["prefs", "show"]) == 0
    out = capsys.readouterr().out
    assert "servers.ca = 'https://127.0.0.1:8443'" in out and "# servers.bank: not set" in out
    assert main(["prefs", "set", "signer.kind", "pen"]) == 2            # the user's input: a PrefsError exits 2
    err = capsys.readouterr().err
    assert err.startswith("semper: ") and "signer.kind" in err and err.count("\n") == 1
    assert main(["prefs", "set", "nonsense", "1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    # a command that reads the preferences refuses a broken file, naming the key
    config.write_text('[servers]\nca = "ftp://x"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["register", "--registration-key", "x", "--name", "n"]) == 2    # the user's file: bad input
    assert "servers.ca" in capsys.readouterr().err
