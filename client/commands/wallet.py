"""``semper wallet withdraw|balance``: e-cash coins from your account, kept in a wallet sealed to your card.

The wallet file holds bearer value, so it is sealed to the card's PIV key-agreement key (9D):
opening it needs the card and its PIN (``client/payment/card_wallet.py``). ``withdraw`` has the
bank's mint blind-sign coins paid from your account (the request signed on the card);
``semper buy --anonymous`` spends them, and the bank cannot tell which withdrawal paid.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..support.money import format_amount, parse_amount
from . import amount, card_args, emit, json_arg, new_file
from .cardparty import bank_args, bank_party

if TYPE_CHECKING:
    from ..payment.module import PartyContext
    from ..payment.modules.ecash import EcashModule


def default_wallet() -> Path:
    from ..support.paths import semper_home
    return semper_home() / "wallet.json"


def _open(ctx: PartyContext, path: Path) -> EcashModule:
    from ..payment.modules.ecash import EcashModule
    module = EcashModule(ctx)
    module.use_card_wallet(path, ctx.extras["piv"])
    return module


def cmd_withdraw(args: argparse.Namespace) -> int:
    path = args.wallet or default_wallet()
    with bank_party(args) as ctx:
        amount = parse_amount(args.amount, ctx.currency)
        module = _open(ctx, path)
        balance = module.withdraw(amount, ctx.currency)
    emit(args, {"withdrawn": format_amount(amount, ctx.currency), "wallet": str(path),
                "balance": format_amount(balance, ctx.currency), "account": ctx.account},
         f"withdrew {format_amount(amount, ctx.currency)} from account {ctx.account} as e-cash; the wallet {path} "
         f"holds {format_amount(balance, ctx.currency)}")
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    from . import UsageError
    path = args.wallet or default_wallet()
    if not path.exists():
        raise UsageError(f"no wallet at {path}; withdraw coins first (semper wallet withdraw AMOUNT)")
    with bank_party(args) as ctx:
        module = _open(ctx, path)
        wallet = module.ctx.wallet
        if wallet is None:
            raise UsageError(f"the wallet at {path} could not be opened with this card")
        coins = [c.denomination for c in wallet.coins if c.currency == ctx.currency]
        in_flight = sum(c.denomination for cs in wallet.in_flight.values() for c in cs)
    emit(args, {"wallet": str(path), "balance": format_amount(sum(coins), ctx.currency), "coins": len(coins),
                "in_flight": format_amount(in_flight, ctx.currency), "pending_withdrawals": len(wallet.pending)},
         f"{path}: {format_amount(sum(coins), ctx.currency)} in {len(coins)} coin(s)"
         + (f"; {format_amount(in_flight, ctx.currency)} handed to a payee and not yet settled" if in_flight else ""))
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    wallet = sub.add_parser("wallet", help="e-cash: withdraw coins into a wallet sealed to your card").add_subparsers(
        dest="wallet_command", required=True)
    for name, fn, text in (("withdraw", cmd_withdraw, "withdraw e-cash from your account (signed on the card)"),
                           ("balance", cmd_balance, "what the wallet holds (opening it needs the card's PIN)")):
        p = wallet.add_parser(name, help=text)
        if name == "withdraw":
            p.add_argument("amount", type=amount, help="in your account's currency, e.g. 20.00")
        card_args(p)
        p.add_argument("--pin-stdin", action="store_true", help="read the card PIN from standard input")
        p.add_argument("-w", "--wallet", type=new_file, help="the wallet file (default: $SEMPER_HOME/wallet.json)")
        bank_args(p)
        json_arg(p)
        p.set_defaults(fn=fn)
