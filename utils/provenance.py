"""Which code made a run: the repository's git commit, whether tracked files differed from it,
and the command. Recorded in every results.json and checkpoint, so that a table can tell runs
of different code apart."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from utils.errors import warn

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.cache
def code_version() -> dict | None:
    """{"commit": HEAD's 40 hex digits, "dirty": whether tracked files differ from it}, or None
    (said once) where the code is not a git checkout of its own (an unpacked archive, or a copy
    inside another repository) or git is missing."""
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == REPO else None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if commit is None or status is None:
        warn(f"{REPO.name} is not a git checkout: its runs record code: null, not the commit that made them")
        return None
    return {"commit": commit, "dirty": bool(status)}
