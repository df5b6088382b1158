"""The interface the ledger uses to run a script: one round trip, EVALSHA with NOSCRIPT reload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from walletgate.ledger.scripts import Script

ScriptArg = str | bytes | int


class ScriptRunner(Protocol):
    """Runs one script against the node that owns ``keys[0]``'s slot.

    Raises :class:`walletgate.ledger.errors.LedgerUnavailable` when Redis is down, slow beyond
    the configured timeout, or the in-flight bound is reached for longer than the queue wait;
    raises :class:`walletgate.ledger.errors.LedgerScriptError` when the script itself errors.
    """

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any: ...

    async def close(self) -> None: ...


class RedisPyRunner:
    """A runner on redis-py's asyncio client: simple, and the baseline the fast path beats.

    Kept for tooling and comparisons; the gateway's hot path uses the batched runner.
    """

    def __init__(self, client: Any, *, command_timeout_ms: int = 2000) -> None:
        from walletgate.ledger.fastredis import script_fence_us

        self._client = client
        self._fence_us = script_fence_us(command_timeout_ms)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from walletgate.ledger.errors import LedgerScriptError, LedgerUnavailable
        from walletgate.ledger.fastredis import script_deadline, script_failure

        # The deadline goes last, after the script's own arguments (see script_deadline).
        args = (*args, script_deadline(self._fence_us))
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self._client.eval(script.source, len(keys), *keys, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise LedgerUnavailable(str(error)) from None
        except ResponseError as error:
            failure = script_failure(error)
            if isinstance(failure, LedgerUnavailable):
                raise failure from None
            raise LedgerScriptError(str(error)) from None

    async def close(self) -> None:
        await self._client.aclose()
