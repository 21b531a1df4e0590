"""The house rules, checked on the source: one import namespace, and a layer calls only the layers below it
and the supporting services (docs/architecture.md). Nothing below the servers imports them; nothing in the
product imports the benches or chaos; the simulated card imports nothing of the host side."""
from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("client", "hardware", "hsm", "card_applet_sim", "bench", "chaos")

# what each part may import besides itself (a part: a top folder, or a package / module of client)
SUPPORT = {"semper.client.support", "semper.hardware", "semper.hsm"}
LAYERS = SUPPORT | {"semper.client.signers", "semper.client.tinguin", "semper.client.transfer",
                    "semper.client.payment", "semper.client.exchange", "semper.client.commerce"}
ALLOWED: dict[str, set[str]] = {
    "semper.card_applet_sim": set(),
    "semper.hardware": {"semper.card_applet_sim"},      # only the in-process door and the vpcd server: below
    "semper.hsm": {"semper.hardware"},
    "semper.client.support": {"semper.hardware", "semper.hsm"},
    "semper.client.signers": SUPPORT,
    "semper.client.tinguin": SUPPORT,
    "semper.client.transfer": SUPPORT,
    "semper.client.payment": SUPPORT | {"semper.client.transfer"},
    "semper.client.exchange": SUPPORT | {"semper.client.transfer"},
    "semper.client.commerce": LAYERS - {"semper.client.commerce"},
    "semper.client.servers": LAYERS,
    "semper.client.agent": LAYERS,                       # a business application above the layers (docs/web.md)
    "semper.client.demo_world": LAYERS | {"semper.client.servers"},
    "semper.client.demo": LAYERS | {"semper.client.servers", "semper.client.demo_world"},
    "semper.client.demo_web": LAYERS | {"semper.client.servers", "semper.client.demo_world", "semper.client.agent"},
    "semper.client.commands": LAYERS | {"semper.client.servers", "semper.client.demo", "semper.client.demo_world",
                                        "semper.client.demo_web", "semper.client.agent", "semper.card_applet_sim"},
    "semper.client.cli": LAYERS | {"semper.client.commands"},
    "semper.client": set(),                              # the package's own __init__
    "semper.bench": {"*"},
    "semper.chaos": {"*"},
}
# the only modules of the hardware layer that may reach the simulated card itself
CARD_DOORS = {"semper.hardware.simulator", "semper.hardware.pcscd"}


def modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out["semper." + ".".join(parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return found


def part_of(name: str) -> str:
    parts = name.split(".")
    if parts[1] != "client" or len(parts) == 2:
        return ".".join(parts[:2])
    return ".".join(parts[:3])


def test_every_package_folder_is_installed_under_the_semper_namespace() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {n for n, p in modules().items() if p.name == "__init__.py"}
    assert set(config["packages"]) == packages
    assert config["package-dir"] == {f"semper.{f}": f for f in FOLDERS}


def test_nothing_imports_a_bare_top_level_name() -> None:
    """`import client` from the source tree would be a second copy of the project (its own classes)."""
    bare = re.compile(rf"^({'|'.join(FOLDERS)})(\.|$)")
    found = [f"{path.relative_to(REPO)}:{line}: {target}"
             for name, path in modules().items() for line, target in imports(name, path) if bare.match(target)]
    for path in (REPO / "tests").rglob("*.py"):
        found += [f"{path.relative_to(REPO)}:{line}: {target}" for line, target in imports("tests.x", path)
                  if bare.match(target)]
    assert not found


def test_each_layer_imports_only_what_is_below_it() -> None:
    own = modules()
    wrong: list[str] = []
    for name, path in own.items():
        mine = part_of(name)
        allowed = ALLOWED[mine]
        for line, target in imports(name, path):
            if target not in own or "*" in allowed:
                continue
            theirs = part_of(target)
            if theirs == mine or theirs == "semper.client":
                continue
            if theirs not in allowed or (theirs == "semper.card_applet_sim" and mine == "semper.hardware"
                                         and name not in CARD_DOORS):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {mine} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_cycle_among_the_parts() -> None:
    own = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in own.items():
        for _line, target in imports(name, path):
            if target in own and part_of(target) != part_of(name) and part_of(target) != "semper.client":
                graph[part_of(name)].add(part_of(target))
    seen: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        seen[node] = 1
        for nxt in graph[node]:
            assert seen.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in seen:
                visit(nxt, trail + [node])
        seen[node] = 2
    for node in list(graph):
        if node not in seen:
            visit(node, [])
