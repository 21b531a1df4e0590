"""A payment module written outside semper: installed with pip into a folder of its own, found through
its entry point, negotiated and paid with, with no change to semper. A broken plug-in next to it is
reported with its reason and does not stop the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "semper-voucher-demo"
version = "0.1"

[project.entry-points."semper.payment_modules"]
voucher = "semper_voucher:VoucherModule"
broken = "semper_voucher.missing:Nothing"

[tool.setuptools]
packages = ["semper_voucher"]
"""

MODULE = '''
"""A legacy voucher system (its own interface) and the adapter that makes it a semper module."""
import hashlib, hmac
from semper.client.payment.adapter import OneShotAdapter
from semper.client.payment.model import ExchangeProperties, Model

SECRET = b"voucher-issuer-secret"
USED = set()


class VoucherSystem:                       # the wrapped system: knows nothing of semper
    def issue(self, cents, reference):
        code = hmac.new(SECRET, f"{cents}:{reference}".encode(), hashlib.sha256).hexdigest()
        return {"cents": cents, "reference": reference, "code": code}

    def cash(self, voucher):
        good = hmac.compare_digest(voucher["code"], self.issue(voucher["cents"], voucher["reference"])["code"])
        if not good or voucher["code"] in USED:
            return False
        USED.add(voucher["code"])
        return True


class VoucherModule(OneShotAdapter):
    name = "voucher"
    model = Model.CASH_LIKE
    properties = ExchangeProperties(externally_verifiable=False, revocable=False, online=False)

    def __init__(self, context):
        super().__init__(context)
        self.system = VoucherSystem()

    def system_instruments(self):
        return [("voucher-book", 978, None)]

    def system_pay(self, ref, terms):
        return self.system.issue(terms.amount, terms.payment_id)

    def system_redeem(self, token, terms):
        return token.get("cents") == terms.amount and token.get("reference") == terms.payment_id \\
            and self.system.cash(token)
'''

SCRIPT = textwrap.dedent("""
    import json
    from semper.client.payment.manager import LocalPayee, PaymentManager, pay
    from semper.client.payment.module import PartyContext
    from semper.client.payment.model import Terms
    from semper.client.payment.registry import discover
    found = {f.name: f.problem for f in discover()}
    payer, payee = PaymentManager(PartyContext()), PaymentManager(PartyContext())
    terms = Terms.new(450, 978, "shop", b"order 1")
    payee.expect(terms)
    rec = pay(payer, terms, payee.offer(), LocalPayee(payee))
    print(json.dumps({"found": found, "module": rec.module, "status": rec.status.value,
                      "payee": payee.record(terms.payment_id, "payee").status.value,
                      "problems": payer.problems}))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("voucher-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "semper_voucher").mkdir()
    (src / "semper_voucher" / "__init__.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("voucher-site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail(f"pip could not install the external module: {r.stderr[-800:]}")
    assert (target / "semper_voucher_demo-0.1.dist-info" / "entry_points.txt").exists()
    return target


def _env(target: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


def test_external_module_is_found_and_pays(installed: Path) -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=_env(installed), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["found"]["voucher"] == ""                              # loaded and checked
    assert {"card-purse", "setpay", "cheque", "ecash"} <= set(out["found"])   # ours still there
    assert "cannot be imported" in out["found"]["broken"]            # a broken plug-in is reported, not fatal
    assert out["module"] == "voucher" and out["status"] == "paid" and out["payee"] == "paid"
    assert "broken" in out["problems"]


def test_cli_lists_the_external_module(installed: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "semper.client.cli", "payment", "modules", "--json"],
                       capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=_env(installed), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["voucher"]["model"] == "cash-like" and rows["voucher"]["target"] == "semper_voucher:VoucherModule"
    assert "problem" in rows["broken"]


def test_without_the_package_it_is_not_there() -> None:
    from semper.client.payment.registry import discover
    assert "voucher" not in {f.name for f in discover()}
