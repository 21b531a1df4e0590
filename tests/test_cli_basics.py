"""The command line: every group builds, amounts parse strictly, bad input is one clear line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from semper.client.cli import build_parser
from semper.client.support.money import AmountError, format_amount, parse_amount, parse_currency


def test_every_command_group_registers():
    parser = build_parser()
    text = parser.format_help()
    for group in ("readers", "card", "bench", "demo"):
        assert group in text


@pytest.mark.parametrize("text,minor", [("12.50", 1250), ("0.01", 1), ("7", 700), (" 3.5 ", 350)])
def test_amounts(text, minor):
    assert parse_amount(text) == minor
    assert format_amount(minor) == f"{minor // 100}.{minor % 100:02d}"


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "1.001", "nan", "NaN", "inf", "1e10", "1e3", "+5", "1_000",
                                  "\u0661\u0662", "1,5", ".5", "5.", "99999999999"])
def test_bad_amounts(text):
    with pytest.raises(AmountError):
        parse_amount(text)


def test_currencies():
    assert parse_currency("eur") == 978 and parse_currency("840") == 840 and parse_currency("jpy") == 392
    with pytest.raises(AmountError):
        parse_currency("XYZ")
    assert format_amount(1250, 978) == "12.50 EUR"


@pytest.mark.parametrize("minor,currency,text", [(-5, 978, "-0.05 EUR"), (-105, 978, "-1.05 EUR"), (-5, None, "-0.05"),
                                                  (0, 978, "0.00 EUR"), (500, 392, "500 JPY"), (-1, 392, "-1 JPY"),
                                                  (1234, 414, "1.234 KWD"), (7, 414, "0.007 KWD")])
def test_negative_amounts_and_minor_units_format(minor, currency, text):
    assert format_amount(minor, currency) == text


def test_amounts_follow_the_currencys_minor_unit():
    assert parse_amount("500", 392) == 500                    # yen have no decimals
    assert parse_amount("1.234", 414) == 1234                 # dinar have three
    assert parse_amount("12.5", 978) == 1250
    with pytest.raises(AmountError, match="no decimals"):
        parse_amount("1.5", 392)
    with pytest.raises(AmountError, match="at most 3 decimals"):
        parse_amount("1.2345", 414)


def _semper(*args: str, **kw):
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_bad_input_gives_one_line_and_status_2(tmp_path):
    r = _semper("card", "load", "1e3", "--image", str(tmp_path / "none.card"), "--pin-stdin", input="1234\n")
    assert r.returncode == 2 and "plain decimal digits" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _semper("card", "new", "--image", str(tmp_path / "c.card"), "--pin-stdin", input="12\n12345678\n",
                env={"SEMPER_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "4 to 8 digits" in r.stderr
    assert not (tmp_path / "c.card").exists()                       # nothing half-made


def test_missing_image_is_a_clear_error(tmp_path):
    r = _semper("card", "info", "--image", str(tmp_path / "none.card"))
    assert r.returncode == 1 and "semper card new" in r.stderr


def test_card_new_info_load_pay_in_process(tmp_path):
    env = {"SEMPER_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    buyer, psam = str(tmp_path / "b.card"), str(tmp_path / "p.card")
    no_pin = _semper("card", "new", "--image", psam, "--psam", input="", env=env)
    assert no_pin.returncode == 2 and "--scheme-pin-file" in no_pin.stderr and "Traceback" not in no_pin.stderr
    assert not (tmp_path / "home" / "scheme").exists()               # nothing made without the scheme's PIN
    (tmp_path / "scheme.pin").write_text("scheme-pin-2580\n")
    env["SEMPER_SCHEME_PIN_FILE"] = str(tmp_path / "scheme.pin")
    assert _semper("card", "new", "--image", buyer, "--pin-stdin", input="1234\n12345678\n", env=env).returncode == 0
    assert _semper("card", "new", "--image", psam, "--psam", env=env).returncode == 0
    again = _semper("card", "new", "--image", buyer, "--pin-stdin", input="1234\n12345678\n", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    r = _semper("card", "load", "20.00", "--image", buyer, "--pin-stdin", input="1234\n", env=env)
    assert r.returncode == 0, r.stderr
    r = _semper("card", "pay", "5.25", "--image", buyer, "--psam-image", psam, env=env)
    assert r.returncode == 0, r.stderr
    r = _semper("card", "pay", "50.00", "--image", buyer, "--psam-image", psam, env=env)
    assert r.returncode == 1 and "balance is too low" in r.stderr
    info = _semper("card", "info", "--image", buyer, "--json", env=env)
    assert '"balance": "14.75 EUR"' in info.stdout
    log = _semper("card", "log", "--image", buyer, env=env)
    assert "debit" in log.stdout and "load" in log.stdout
