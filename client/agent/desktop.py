"""``semper agent install``: register ``semper agent open`` as the desktop's handler of ``web+semper:`` links.

Why a desktop file: it is how a freedesktop.org desktop (and the browsers on it, through xdg-open) learns
which program opens a URL scheme. The entry is hidden from menus (``NoDisplay``) and runs ``semper agent
open %u``, which hands the link to the running agent with the agent's per-start secret. A page can offer
such a link, but only the user can follow it, and the deal still waits for the TINGUIN's confirmation.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .handoff import SCHEME

FILE_NAME = "semper-agent.desktop"
MIME = f"x-scheme-handler/{SCHEME}"


def applications_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "applications"


def _exec_arg(text: str) -> str:
    """One argument of a desktop entry's Exec key, quoted as the Desktop Entry Specification says."""
    if text and not any(c in text for c in ' \t\n"\'\\><~|&;$*?#()`%'):
        return text
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in text).replace("%", "%%")
    return f'"{escaped}"'


def desktop_entry(command: list[str]) -> str:
    line = " ".join(_exec_arg(a) for a in command)
    return ("[Desktop Entry]\nType=Application\nName=SEMPER agent\n"
            "Comment=Hand a shop's order to SEMPER; you confirm it in the TINGUIN\n"
            f"Exec={line} agent open %u\nTerminal=false\nNoDisplay=true\nMimeType={MIME};\n")


def install(folder: Path | None = None, command: list[str] | None = None, register: bool = True) -> list[str]:
    """Write the desktop entry and make it the default for the scheme; returns what was done, line by line."""
    target = (folder or applications_dir())
    target.mkdir(parents=True, exist_ok=True)
    path = target / FILE_NAME
    path.write_text(desktop_entry(command or [sys.executable, "-m", "semper.client.cli"]))
    done = [f"wrote {path} (MimeType={MIME})"]
    if not register:
        return done
    for tool, args in (("update-desktop-database", [str(target)]), ("xdg-mime", ["default", FILE_NAME, MIME])):
        exe = shutil.which(tool)
        if exe is None:
            done.append(f"{tool} is not installed: your desktop reads {path} when it next scans {target}")
            continue
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        done.append(f"{tool} {' '.join(args)}: " + ("done" if r.returncode == 0 else
                                                      f"failed ({(r.stderr or r.stdout).strip()[:200]})"))
    return done
