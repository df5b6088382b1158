"""Lua scripts: read once from ``ledger/lua/*.lua`` with the shared prelude prepended.

A script may also name shared parts of its own family with lines ``-- include: _<name>``;
those files (underscore-prefixed, never scripts themselves) go between the prelude and the
script, in the order named, so that two scripts of one family keep one copy of what they share.

Each script is called with EVALSHA; a runner that gets NOSCRIPT (a restarted or failed-over
Redis) sends the full source once with EVAL, which also caches it again on the server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

PRELUDE_NAME = "_prelude"
INCLUDE_MARK = "-- include: "
SHEBANG_MARK = "#!lua"


# A script whose second run with the same arguments does not answer as its first (it keeps no
# outcome to replay) says so in its header; the runners never send it twice.
RESEND_UNSAFE_MARK = "-- resend: unsafe"


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str
    # Whether a runner may send the call again after its connection broke in flight.
    resend_safe: bool = True


def _read(name: str) -> str:
    return resources.files("walletgate.ledger").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def load_script(name: str) -> Script:
    """The script ``lua/<name>.lua`` after the prelude and its includes (cached per process)."""
    assert not name.startswith("_"), "the prelude and includes are not scripts of their own"
    body = _read(name)
    includes = [
        line.removeprefix(INCLUDE_MARK).strip()
        for line in body.splitlines()
        if line.startswith(INCLUDE_MARK)
    ]
    assert all(part.startswith("_") and part != PRELUDE_NAME for part in includes), includes
    # A shebang line (script flags) must stay the script's first line.
    shebang = ""
    if body.startswith(SHEBANG_MARK):
        shebang, body = body.split("\n", 1)
    parts = [_read(PRELUDE_NAME), *(_read(part) for part in includes), body]
    if shebang:
        parts.insert(0, shebang)
    source = "\n".join(parts).encode("utf-8")
    return Script(
        name=name,
        source=source,
        sha=hashlib.sha1(source, usedforsecurity=False).hexdigest(),
        resend_safe=not any(line.startswith(RESEND_UNSAFE_MARK) for line in body.splitlines()),
    )


def all_script_names() -> list[str]:
    directory = resources.files("walletgate.ledger").joinpath("lua")
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in directory.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
