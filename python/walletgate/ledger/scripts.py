"""Lua scripts: read once from ``ledger/lua/*.lua`` with the shared prelude prepended.

Each script is called with EVALSHA; a runner that gets NOSCRIPT (a restarted or failed-over
Redis) sends the full source once with EVAL, which also caches it again on the server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

PRELUDE_NAME = "_prelude"


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str


def _read(name: str) -> str:
    return resources.files("walletgate.ledger").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def load_script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with the prelude prepended (cached for the process)."""
    assert not name.startswith("_"), "the prelude is not a script of its own"
    source = (_read(PRELUDE_NAME) + "\n" + _read(name)).encode("utf-8")
    return Script(
        name=name, source=source, sha=hashlib.sha1(source, usedforsecurity=False).hexdigest()
    )


def all_script_names() -> list[str]:
    directory = resources.files("walletgate.ledger").joinpath("lua")
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in directory.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
