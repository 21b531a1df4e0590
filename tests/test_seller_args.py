"""``semper shop init`` and ``semper mall init`` declare a seller's options in one place (commands/seller_args.py):
the same flags, the same checks, and help that names the real defaults."""
from __future__ import annotations

import argparse

import pytest

from semper.client.cli import build_parser
from semper.client.servers.mall_home import BUYER_MODULES

SELLER_FLAGS = {"--dir", "--name", "--token", "--token-dir", "--account", "--bank", "--bank-tls-root", "--tls-dir",
                "--modules", "--currency"}


def _sub(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings if o.startswith("--")}


def test_shop_and_mall_init_take_the_same_seller_options() -> None:
    root = build_parser()
    shop, mall = _flags(_sub(root, "shop", "init")), _flags(_sub(root, "mall", "init"))
    assert SELLER_FLAGS <= shop.keys() and SELLER_FLAGS <= mall.keys()
    for flag in SELLER_FLAGS:
        assert shop[flag].required == mall[flag].required, flag
        assert shop[flag].type == mall[flag].type, flag
    assert {"--pin-file", "--pin-stdin"} <= _flags(_sub(root, "serve", "shop")).keys()
    assert {"--pin-file", "--pin-stdin"} <= _flags(_sub(root, "serve", "mall")).keys()


def test_the_mall_help_names_the_modules_it_defaults_to() -> None:
    help_text = _flags(_sub(build_parser(), "mall", "init"))["--modules"].help or ""
    assert f"default {','.join(BUYER_MODULES)}" in help_text


@pytest.mark.parametrize("command", [["shop", "init"], ["mall", "init"]])
def test_a_missing_bank_tls_root_is_refused_as_bad_input(command: list[str], tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--name", "X", "--token", "t", "-a", "1", "--bank", "https://b",
                                   "--bank-tls-root", str(tmp_path / "missing.pem"), "--tls-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "missing.pem" in capsys.readouterr().err
