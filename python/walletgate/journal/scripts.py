"""This module reads the journal's Lua scripts, once per process, from ``journal/lua/*.lua``.

The journal sends each script's text whole with EVAL. Unlike the ledger's scripts (see
``walletgate.ledger.scripts``) they get no prelude, so a script that reads keys of several slots
of its own node keeps ``#!lua flags=allow-cross-slot-keys`` as its first line, where Redis looks
for it; the header that names its KEYS, ARGV and reply follows that line.
"""

from __future__ import annotations

from importlib import resources


def read_script(name: str) -> str:
    """The text of ``journal/lua/<name>.lua``."""
    return resources.files("walletgate.journal").joinpath("lua", f"{name}.lua").read_text("utf-8")


# Shard leases (the writer's ownership of a shard).
ACQUIRE_LEASE_LUA = read_script("acquire_lease")
RENEW_LEASE_LUA = read_script("renew_lease")
RELEASE_LEASE_LUA = read_script("release_lease")

# Reading the pending-journal streams (see walletgate.journal.streams.StreamReader).
READ_STREAMS_LUA = read_script("read_streams")
STREAM_LENGTHS_LUA = read_script("stream_lengths")

# Finishing a batch on disk: map its transaction keys, then delete its stream entries.
MAP_KEYS_LUA = read_script("map_keys")
DELETE_ENTRIES_LUA = read_script("delete_entries")
