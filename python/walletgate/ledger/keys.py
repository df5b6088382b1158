"""Redis key names. Every key of one player shares the hash tag ``{tenant:player}``.

The pending-journal stream of a player lives in a bucket whose key is chosen to hash to the same
Redis Cluster slot as the player's tag, so one script can touch both on a cluster.
"""

from __future__ import annotations

from functools import lru_cache

from redis.crc import key_slot

CLUSTER_SLOTS = 16384
KEY_PREFIX = "wg:"
MAX_ID_CHARS = 128
# An admin adjustment's transaction key (in the journal and the key map) is this plus its ref.
ADMIN_KEY_PREFIX = "admin:"


def valid_identifier(value: str) -> bool:
    """Tenant and player ids may not break the hash tag or the key layout."""
    return (
        0 < len(value) <= MAX_ID_CHARS
        and value.isprintable()
        and "{" not in value
        and "}" not in value
        and ":" not in value
    )


def player_tag(tenant: str, player: str) -> str:
    return "{" + tenant + ":" + player + "}"


def player_prefix(tenant: str, player: str) -> str:
    """``wg:{T:P}:``, the prefix of every key of one player (journal fx store the rest)."""
    return KEY_PREFIX + player_tag(tenant, player) + ":"


def account_key(tenant: str, player: str) -> str:
    return player_prefix(tenant, player) + "acct"


def transaction_key(tenant: str, player: str, key: str) -> str:
    return player_prefix(tenant, player) + "tx:" + key


def admin_record_key(tenant: str, player: str, ref: str) -> str:
    """An admin adjustment's stored outcome. Its transaction key is ``admin:<ref>``, but it is
    kept apart from ``tx:`` because a protocol key (a transfer ``tx_id``, an ``order_id``) may
    itself be ``admin:<ref>``: neither may answer for, or block, the other."""
    return player_prefix(tenant, player) + "adm:" + ref


def admin_claim_key(tenant: str, ref: str) -> str:
    """The tenant-wide claim on an adjustment ref (``admin_claim.lua``), which makes a ref used
    for a second player a conflict: the stored outcomes are per player. Its own hash tag keeps
    the claim script on one slot; the fixed ``claim:`` part keeps any ref (``acct`` included)
    from making the key look like an account hash to the journal's account scan."""
    return KEY_PREFIX + "{adm:" + tenant + "}:claim:" + ref


def round_key(tenant: str, player: str, round_id: str) -> str:
    return player_prefix(tenant, player) + "round:" + round_id


def slot_of(tenant: str, player: str) -> int:
    return int(key_slot(player_tag(tenant, player).encode()))


@lru_cache(maxsize=1)
def _journal_tags_by_slot() -> tuple[str, ...]:
    """For every cluster slot, the shortest ``j<n>`` tag that hashes to it (built once, ~0.2 s)."""
    tags: list[str | None] = [None] * CLUSTER_SLOTS
    missing = CLUSTER_SLOTS
    candidate = 0
    while missing:
        tag = f"j{candidate}"
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        candidate += 1
    return tuple(tag for tag in tags if tag is not None)


def replication_probe_key(slot: int | None) -> str:
    """The key the hot path writes before each WAIT (``[redis] replica_acks``, see
    ``fastredis._AckedWire``): one for a standalone Redis (``slot`` None), one in ``slot`` for a
    cluster node, which may write only keys of its own slots. It holds nothing but "1"."""
    tag = "replication-probe" if slot is None else _journal_tags_by_slot()[slot]
    return KEY_PREFIX + "{" + tag + "}:replication-probe"


def journal_bucket(tenant: str, player: str, buckets: int, cluster: bool) -> int:
    """The bucket of a player's journal records: its slot on a cluster, else slot mod buckets."""
    slot = slot_of(tenant, player)
    return slot if cluster else slot % buckets


def journal_stream_key(bucket: int, cluster: bool) -> str:
    tag = _journal_tags_by_slot()[bucket] if cluster else f"j{bucket}"
    return KEY_PREFIX + "{" + tag + "}:journal"


def all_journal_stream_keys(buckets: int, cluster: bool) -> list[str]:
    count = CLUSTER_SLOTS if cluster else buckets
    return [journal_stream_key(bucket, cluster) for bucket in range(count)]


def session_key(tenant: str, token: str) -> str:
    """A session token record (not under a player tag: the token is what is looked up)."""
    return KEY_PREFIX + "{sess:" + tenant + ":" + token + "}"


def transfer_token_key(tenant: str, token: str) -> str:
    return KEY_PREFIX + "{ttok:" + tenant + ":" + token + "}"


def midas_session_key(tenant: str, player: str) -> str:
    return player_prefix(tenant, player) + "midas_session"
