"""No test hooks in the product: misbehaviour lives in chaos/ and the tests, never in what users run.

Why on the source: a cheat flag or a crash switch in a production class is one assignment or one
environment variable away from a real service (issue 13, item 8). Fault injection enters through
seams the code offers with an honest default (``Party.outbox``, ``ThirdParty.on_step``,
``ShopHome.open(shop_class=...)``), and the misbehaving halves are in ``chaos/``. These checks keep
the vocabulary of the removed hooks, and any new environment switch, out of the product.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("client", "hardware", "hsm", "card_applet_sim")

# names of the removed hooks and their kind: a class, attribute, argument or function so named is a
# hook coming back (the domain's own words, e.g. a clearing entry's ``fault``, stay allowed)
FORBIDDEN = re.compile(r"cheat|crash|inject|stop_before|stops_at|tamper|^faults$", re.IGNORECASE)

# the environment variables the product reads, each a setting a user or operator chooses
CONFIGURATION = {
    "SEMPER_HOME", "SEMPER_CONFIG", "SEMPER_CARD_KEYS", "SEMPER_DEBUG", "SEMPER_EVENT_LOOP",
    "SEMPER_SCHEME_PIN_FILE", "SEMPER_INSECURE_ARGV_PIN", "SOFTHSM2_CONF", "XDG_DATA_HOME", "XDG_CONFIG_HOME",
    "SEMPER_AGENT_URL",                 # where the shop's page finds the buyer's agent (docs/web.md)
    "SEMPER_FAST_HTTP",                 # 0: the services' JSON routes served by aiohttp alone (docs/services.md)
    "DISPLAY", "WAYLAND_DISPLAY",       # the desktop's own: whether semper demo --web can open a browser
}


def product_files() -> list[Path]:
    return sorted(p for folder in PRODUCT for p in (REPO / folder).rglob("*.py"))


def names_in(tree: ast.AST) -> list[tuple[int, str]]:
    """Every identifier the code defines or uses (not strings, comments or docstrings)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
        elif isinstance(node, ast.arg):
            out.append((node.lineno, node.arg))
        elif isinstance(node, ast.keyword) and node.arg:
            out.append((node.value.lineno, node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.lineno, node.name))
        elif isinstance(node, ast.alias):
            out.append((getattr(node, "lineno", 0), node.asname or node.name))
    return out


def environment_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, variable) for each os.environ.get / os.environ[...] / os.getenv read; a module-level
    string constant used as the key is resolved, anything else is reported as '?'."""
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}

    def key(node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        return "?"

    def is_environ(node: ast.expr) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = node.func
            if (f.attr == "get" and is_environ(f.value)) or f.attr == "getenv":
                out.append((node.lineno, key(node.args[0])))
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            out.append((node.lineno, key(node.slice)))
    return out


def test_production_code_carries_no_cheat_crash_or_fault_hooks() -> None:
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{path.relative_to(REPO)}:{line}: {name}" for line, name in names_in(tree) if FORBIDDEN.search(name)]
    assert not found, "test hooks in production code (move them to chaos/ or tests/):\n" + "\n".join(sorted(set(found)))


def test_production_code_reads_only_its_configuration_from_the_environment() -> None:
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{path.relative_to(REPO)}:{line}: {var}" for line, var in environment_reads(tree)
                  if var not in CONFIGURATION]
    assert not found, "environment switches outside the documented configuration:\n" + "\n".join(found)


def test_the_checks_see_a_hook_when_there_is_one() -> None:
    """The two scans are not blind: a planted cheat flag and crash switch are both reported."""
    planted = ast.parse("import os\nCRASH = 'SEMPER_X_CRASH'\nclass Shop:\n    def __init__(self, cheat=None):\n"
                        "        self.crash_at = os.environ.get(CRASH)\n        self.faults = os.environ['Y']\n")
    assert {n for _l, n in names_in(planted) if FORBIDDEN.search(n)} >= {"cheat", "crash_at", "CRASH", "faults"}
    assert [v for _l, v in environment_reads(planted)] == ["SEMPER_X_CRASH", "Y"]
