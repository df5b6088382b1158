"""This module reads the journal's Lua scripts, once per process, from ``journal/lua/*.lua``.

The journal sends each script's text whole with EVAL. Unlike the ledger's scripts (see
``walletgate.ledger.scripts``) they get no prelude, so each keeps its ``#!lua flags=...`` line
first, where Redis looks for it; the header that names its KEYS, ARGV and reply follows it:

* ``allow-cross-slot-keys``: the script reads or deletes streams of several slots of its node;
* ``no-writes`` (the reads) and ``allow-oom`` (leases, key map, deletes): when Redis is over
  ``maxmemory`` the money scripts are refused, and the writer must still drain the pending
  streams, which is what frees the memory. Without these flags Redis 7 refuses them too.
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

# The registry of live writers, and the figures every writer publishes.
REGISTER_WRITER_LUA = read_script("register_writer")
PUBLISH_STATS_LUA = read_script("publish_stats")

# Reading the pending-journal streams (see walletgate.journal.streams.StreamReader).
READ_STREAMS_LUA = read_script("read_streams")
STREAM_LENGTHS_LUA = read_script("stream_lengths")
# Counting the records of streams whose owner stopped reporting (see read_journal_figures).
COUNT_RECORDS_LUA = read_script("count_records")

# Finishing a batch on disk: map its transaction keys, then delete its stream entries.
MAP_KEYS_LUA = read_script("map_keys")
DELETE_ENTRIES_LUA = read_script("delete_entries")
