"""The hot-path Redis client: pipelined connections that write each event-loop tick as one batch.

redis-py's asyncio client spends most of its time per command in Python bookkeeping (a
connection checked out of a pool, a coroutine stack per read, one ``write`` per command). A
wallet gateway only needs a few commands with tiny replies, so this module keeps the work per
command to the minimum:

* one :class:`asyncio.Protocol` per socket parses replies with ``hiredis.Reader`` (C) straight
  from ``data_received``, so no reader task and no stream buffering;
* every command issued during one event-loop tick is appended to a list and written with one
  ``transport.write`` from a ``loop.call_soon`` callback, which turns 64 concurrent callers into
  one syscall and lets Redis read them all in one go;
* replies come back in order on a connection, so they are matched FIFO to futures;
* timeouts are tracked per written batch, not per command, so the hot path allocates no timer.

Every queue is bounded: commands in flight (:class:`InFlightLimiter`), the time a caller waits
for a slot, the unparsed reply bytes, the reconnect backoff. A command whose reply does not come
within ``command_timeout_ms`` breaks its connection (the FIFO matching is then unknowable): all
its callers get :class:`LedgerUnavailable` and the next command reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import hiredis

from walletgate.config import RedisConfig
from walletgate.ledger import keys
from walletgate.ledger.errors import (
    ConnectionDropped,
    LedgerScriptError,
    LedgerUnavailable,
    NotReplicated,
    OutcomeUnknown,
)
from walletgate.ledger.runner import ScriptArg
from walletgate.ledger.scripts import Script

# Unparsed reply bytes one connection may hold. Script replies are a few hundred bytes and the
# in-flight bound caps how many are outstanding, so reaching this means a runaway reply (or a
# peer that is not Redis); the connection is dropped rather than buffering without limit.
MAX_REPLY_BUFFER_BYTES: Final = 64 * 1024 * 1024
# Commands written together at most: a bound on how long Redis works before the first of them
# gets its reply, and what lets this process and Redis work at the same time (see send()).
MAX_BATCH_COMMANDS: Final = 8

# Reconnect backoff after a failed attempt: the first retry after a drop is immediate, then the
# pause doubles up to the maximum. While it runs, callers fail at once instead of queueing
# behind a connect that is known to fail, which is what "Redis down" must look like upstream.
RECONNECT_BACKOFF_MIN_S: Final = 0.05
RECONNECT_BACKOFF_MAX_S: Final = 1.0

# Callers that may wait for a free in-flight slot, per slot, unless the runner is given
# max_waiters: enough to ride out a burst, and a bound so that a stalled Redis cannot pile up
# coroutines without limit even within queue_wait_ms.
WAITERS_PER_IN_FLIGHT: Final = 4

# Error codes (the first word of a Redis error) that mean the server did not run the command
# for a reason of its own state, not because of the script: the caller sees "unavailable",
# nothing was applied, and a retry may succeed.
UNAVAILABLE_ERROR_CODES: Final = frozenset(
    {
        # The prelude's refusal of a call that reached Redis after its deadline.
        "WGLATE",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "READONLY",
        "NOREPLICAS",
        "MISCONF",
        "OOM",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "MOVED",
        "ASK",
    }
)

# Error codes of a server that is a replica now (a failover that moved the address but kept
# our connection open): the wire is broken so that the next call connects again, and reaches
# the new primary when the address (DNS name or virtual IP) follows it.
REPLICA_ERROR_CODES: Final = frozenset({"READONLY", "MASTERDOWN"})

T = TypeVar("T")

# The share of command_timeout_ms after which a script that has not started yet writes nothing
# (see script_deadline). The other half is the margin for clock skew between gateway and Redis.
SCRIPT_FENCE_SHARE: Final = 0.5


def script_fence_us(command_timeout_ms: int) -> int:
    """How long after it is sent a script call may still start, in microseconds."""
    return int(command_timeout_ms * 1000 * SCRIPT_FENCE_SHARE)


async def resend(
    call: Callable[[Script, Sequence[str], Sequence[ScriptArg]], Awaitable[Any]],
    script: Script,
    keys: Sequence[str],
    args: Sequence[ScriptArg],
    dropped: ConnectionDropped,
) -> Any:
    """Send a call whose connection broke in flight once more (``call`` makes a fresh deadline
    and a fresh connection), see :class:`ConnectionDropped`. Raises :class:`OutcomeUnknown`
    when that fails too, or when the script may not run twice (``-- resend: unsafe``)."""
    if not script.resend_safe:
        raise OutcomeUnknown(f"{script.name} may have run; it is not sent twice") from dropped
    try:
        return await call(script, keys, args)
    except LedgerUnavailable as error:
        raise OutcomeUnknown(f"sent twice, no outcome: {error}") from error


def script_deadline(fence_us: int) -> bytes:
    """The last ARGV of every script call: the unix time (µs) after which the prelude refuses
    to run the call (error WGLATE, nothing written).

    A call that Redis runs only after the gateway gave up on it (a stalled server, a frozen
    primary that resumes after its failover) would otherwise apply what the caller was told
    was not applied. It must be sent within ``fence_us`` of this, and the gateway gives up only
    after the whole command timeout, so every late call is refused as long as Redis's clock is
    behind the gateway's by less than the other share of the timeout.
    """
    return b"%d" % (time.time_ns() // 1000 + fence_us)


ReplyError: Final = hiredis.ReplyError

_EVALSHA: Final = b"EVALSHA"
_EVAL: Final = b"EVAL"
# hiredis's stub types the argument as a one-element tuple; any tuple of arguments is accepted.
pack_command: Final[Callable[[tuple[Any, ...]], bytes]] = hiredis.pack_command


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect: a TCP host and port, or a unix socket path, plus AUTH/SELECT."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def with_endpoint(self, host: str, port: int) -> RedisAddress:
        """The same credentials on another TCP node (cluster nodes share them)."""
        return RedisAddress(
            host=host,
            port=port,
            db=0,
            username=self.username,
            password=self.password,
            tls=self.tls,
        )

    @property
    def endpoint(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path?db=N``.

    The password may also be given as a ``password`` query parameter (redis-py's convention for
    unix sockets). Raises ``ValueError`` with a message that never contains the password.
    """
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    username = urllib.parse.unquote(parsed.username) if parsed.username else None
    password = urllib.parse.unquote(parsed.password) if parsed.password else None
    if "password" in query:
        password = query["password"][0]
    if "username" in query:
        username = query["username"][0]
    db_text = query.get("db", [""])[0]
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError("a unix:// redis url needs a socket path")
        return RedisAddress(
            path=parsed.path,
            db=_parse_db(db_text or "0"),
            username=username,
            password=password,
        )
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported redis url scheme {parsed.scheme!r}")
    path_db = parsed.path.lstrip("/")
    return RedisAddress(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 6379,
        db=_parse_db(path_db or db_text or "0"),
        username=username,
        password=password,
        tls=parsed.scheme == "rediss",
    )


def _parse_db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"redis database must be a non-negative integer, got {text!r}")
    return int(text)


def error_code(reply: Exception) -> str:
    """The first word of a Redis error reply: ``NOSCRIPT``, ``MOVED``, ``ERR``..."""
    return str(reply).split(" ", 1)[0]


def script_failure(reply: Exception) -> Exception:
    """The ledger error for an error reply that is neither NOSCRIPT nor a redirect we follow."""
    message = str(reply)
    if error_code(reply) in UNAVAILABLE_ERROR_CODES:
        return LedgerUnavailable(f"Redis refused the command: {message}")
    return LedgerScriptError(message)


class InFlightLimiter:
    """A bound on commands in flight, with a bounded, time-limited wait for a free slot.

    The fast path (a slot is free and nobody waits) is two attribute operations, done inline by
    the runners. A released slot is handed straight to the oldest waiter, so waiting is FIFO
    and a burst cannot starve early arrivals.
    """

    __slots__ = ("in_flight", "limit", "max_waiters", "queue_wait_s", "waiters")

    def __init__(self, limit: int, queue_wait_s: float, max_waiters: int) -> None:
        if limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.limit = limit
        self.queue_wait_s = queue_wait_s
        self.max_waiters = max_waiters
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting at most ``queue_wait_s``; raises :class:`LedgerUnavailable`."""
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return
        if self.queue_wait_s <= 0 or len(self.waiters) >= self.max_waiters:
            raise LedgerUnavailable(f"Redis client saturated: {self.limit} commands in flight")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(self.queue_wait_s, self._expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # The slot may have been handed over in the same tick the caller was cancelled;
            # pass it on, or it would leak and shrink the bound for good.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            else:
                self._forget(waiter)
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._forget(waiter)
            waiter.set_exception(
                LedgerUnavailable(
                    f"Redis client saturated: no free slot of {self.limit} within "
                    f"{self.queue_wait_s * 1000:.0f} ms"
                )
            )

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        # O(waiters), bounded by max_waiters, and only on the saturated path.
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


class _Wire(asyncio.Protocol):
    """One socket: batches writes per tick, parses replies, matches them FIFO to futures.

    A wire is never reused after it breaks; :class:`FastConnection` makes a new one. This keeps
    late callbacks of a dead transport from touching the state of its successor.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, command_timeout_s: float) -> None:
        self.loop = loop
        self.broken = False
        self._command_timeout_s = command_timeout_s
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        # Futures of commands written or about to be written, oldest first.
        self._pending: deque[asyncio.Future[Any]] = deque()
        # Packed commands of the current tick, written by _flush.
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # Commands written so far, and one (written-count, deadline) mark per written batch; a
        # batch is answered once the reply count reaches its mark. At most one mark per command.
        self._written = 0
        self._marks: deque[tuple[int, float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            reply = reader.gets()
            while reply is not False:
                future = pending.popleft()
                if not future.done():
                    future.set_result(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as error:
            self.fail(f"Redis protocol error: {error}")
            return
        except IndexError:
            self.fail("Redis sent a reply nobody asked for")
            return
        if reader.len() > MAX_REPLY_BUFFER_BYTES:
            self.fail(f"Redis reply larger than {MAX_REPLY_BUFFER_BYTES} bytes")

    def eof_received(self) -> bool | None:
        self.fail("Redis closed the connection", dropped=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("connection to Redis lost", dropped=True)
        if not self._lost.done():
            self._lost.set_result(None)

    # -- commands ---------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command for this tick's batch; the future gets the raw reply.

        Callers check ``broken`` first, but a wire can break between that check and a send
        that follows an ``await``; such a send fails at once instead of waiting for nothing.
        Commands sent back to back without an ``await`` in between are written contiguously,
        which is how ASKING + command stay together.
        """
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.broken:
            future.set_exception(LedgerUnavailable("connection to Redis lost"))
            return future
        self._pending.append(future)
        self._out.append(packed)
        if len(self._out) >= MAX_BATCH_COMMANDS:
            # A full batch goes out now instead of at the end of the tick, so that Redis starts
            # on it while this process still parses the rest of the tick's requests; one batch
            # per tick would make the two take turns instead of working at the same time.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def send_unacked(self, packed: bytes) -> asyncio.Future[Any]:
        """:meth:`send` for a command that writes nothing the ledger needs replicated (the
        handshake, CLUSTER SLOTS): a wire that waits for replicas answers it without waiting."""
        return self.send(packed)

    def _flush(self) -> None:
        # A flush forced by a full batch may run before the scheduled one; that one then finds
        # an empty or fresh batch, which is harmless.
        self._flush_scheduled = False
        out = self._out
        if self.broken or not out:
            return
        transport = self._transport
        if transport is None:
            self.fail("Redis connection is not open")
            return
        self._written += len(out)
        deadline = self.loop.time() + self._command_timeout_s
        self._marks.append((self._written, deadline))
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(deadline, self._check_deadlines)
        try:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        except (OSError, RuntimeError) as error:
            # A transport closing under us; its callers must not wait for the timeout.
            self.fail(f"writing to Redis failed: {error}")
            return
        out.clear()

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if self.broken:
            return
        # Replies received = commands written - commands still awaiting a reply (the pending
        # deque also holds the unwritten ones of the current tick).
        answered = self._written - (len(self._pending) - len(self._out))
        marks = self._marks
        while marks and marks[0][0] <= answered:
            marks.popleft()
        if not marks:
            return
        deadline = marks[0][1]
        if deadline <= self.loop.time():
            self.fail(f"no reply from Redis within {self._command_timeout_s * 1000:.0f} ms")
            return
        self._watchdog = self.loop.call_at(deadline, self._check_deadlines)

    def fail(self, reason: str, *, dropped: bool = False) -> None:
        """Break the wire: every caller still waiting gets LedgerUnavailable, the socket closes.

        ``dropped``: the peer closed or reset the connection, so a command already written may
        have run (:class:`ConnectionDropped`). After a timeout or a protocol error the wire is
        given up on by this side, and a command's fate is left to its deadline.
        """
        if self.broken:
            return
        failure = ConnectionDropped if dropped else LedgerUnavailable
        self.broken = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending = self._pending
        self._pending = deque()
        self._out.clear()
        self._marks.clear()
        for future in pending:
            if not future.done():
                future.set_exception(failure(reason))
        if self._transport is not None:
            # abort(), not close(): queued writes are for callers that were just failed.
            self._transport.abort()

    async def wait_closed(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._lost)
        except TimeoutError:
            pass


class _AckedWire(_Wire):
    """A wire that answers no command before enough replicas hold it (``[redis] replica_acks``).

    Every written batch ends with a write of the probe key and ``WAIT <replica_acks>
    <timeout>``, and the replies of the batch's commands are held until the WAIT's reply comes:
    when it counts enough replicas they are passed on, otherwise each successful reply becomes
    :class:`NotReplicated`. WAIT waits for the replicas to reach the connection's last write,
    and the probe makes that write the newest of the primary: so one WAIT covers every command
    of the batch, and also what they only read. A replay writes nothing, and the movement it
    replays may have been written by another connection; Redis 7.2 and later place a
    connection that did not write at its old position, where WAIT would answer at once.
    Every script call waits, reads included: an answer never shows a state that a failover
    could lose. Error replies pass unchanged: a command that failed wrote nothing.

    Replies are held only while a WAIT is outstanding, so the handshake (sent before
    :meth:`require_acks`) is answered as on a plain wire, and so are the commands sent with
    :meth:`send_unacked` (CLUSTER SLOTS), which add no WAIT to their batch either.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        command_timeout_s: float,
        replica_acks: int,
        ack_timeout_ms: int,
        probe_key: str | None,
    ) -> None:
        assert replica_acks >= 1 and ack_timeout_ms >= 1
        super().__init__(loop, command_timeout_s)
        self._replica_acks = replica_acks
        self._ack_timeout_ms = ack_timeout_ms
        self._wait_packed = pack_command(("WAIT", replica_acks, ack_timeout_ms))
        self.set_probe(probe_key)
        self._acks_required = False
        # Whether the current batch holds a command that needs the replicas' WAIT.
        self._batch_needs_wait = False
        # Futures of the WAITs written, oldest first; the (future, reply) pairs of the commands
        # answered since the last WAIT's reply; and the futures answered without waiting.
        self._waits: deque[asyncio.Future[Any]] = deque()
        self._held: list[tuple[asyncio.Future[Any], Any]] = []
        self._unacked: set[asyncio.Future[Any]] = set()

    def require_acks(self) -> None:
        """From now on, every batch with a :meth:`send` waits for the replicas."""
        self._acks_required = True

    def set_probe(self, probe_key: str | None) -> None:
        """The key written before each WAIT (None: none is known yet, a cluster node whose
        slots the runner has not learned; its WAITs then cover only what the batch wrote)."""
        self._probe_packed = None if probe_key is None else pack_command(("SET", probe_key, "1"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        self._batch_needs_wait = self._acks_required
        return super().send(packed)

    def send_unacked(self, packed: bytes) -> asyncio.Future[Any]:
        future = super().send(packed)
        if not future.done():
            self._unacked.add(future)
        return future

    def _flush(self) -> None:
        if self._batch_needs_wait and self._out and not self.broken:
            if self._probe_packed is not None:
                probe: asyncio.Future[Any] = self.loop.create_future()
                probe.add_done_callback(consume_outcome)
                self._pending.append(probe)
                self._out.append(self._probe_packed)
                self._unacked.add(probe)
            wait: asyncio.Future[Any] = self.loop.create_future()
            self._pending.append(wait)
            self._out.append(self._wait_packed)
            self._waits.append(wait)
        self._batch_needs_wait = False
        super()._flush()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        waits = self._waits
        try:
            reply = reader.gets()
            while reply is not False:
                future = pending.popleft()
                if waits and future is waits[0]:
                    waits.popleft()
                    self._release(reply)
                elif waits and future not in self._unacked:
                    self._held.append((future, reply))
                else:
                    self._unacked.discard(future)
                    if not future.done():
                        future.set_result(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as error:
            self.fail(f"Redis protocol error: {error}")
            return
        except IndexError:
            self.fail("Redis sent a reply nobody asked for")
            return
        if reader.len() > MAX_REPLY_BUFFER_BYTES:
            self.fail(f"Redis reply larger than {MAX_REPLY_BUFFER_BYTES} bytes")

    def _release(self, wait_reply: Any) -> None:
        held = self._held
        self._held = []
        if isinstance(wait_reply, int) and wait_reply >= self._replica_acks:
            for future, reply in held:
                if not future.done():
                    future.set_result(reply)
            return
        reason = (
            f"applied on the primary, but {wait_reply} of {self._replica_acks} replicas "
            f"confirmed it within {self._ack_timeout_ms} ms"
        )
        for future, reply in held:
            if future.done():
                continue
            if isinstance(reply, ReplyError):
                future.set_result(reply)
            else:
                future.set_exception(NotReplicated(reason))

    def fail(self, reason: str, *, dropped: bool = False) -> None:
        if self.broken:
            return
        held = self._held
        self._held = []
        self._waits.clear()
        self._unacked.clear()
        # Their commands ran; only whether the replicas have them is unknown. After a drop the
        # runner sends them again (a replay that waits for the replicas anew).
        failure = ConnectionDropped if dropped else OutcomeUnknown
        for future, _ in held:
            if not future.done():
                future.set_exception(failure(f"{reason} (while waiting for replicas)"))
        super().fail(reason, dropped=dropped)


class FastConnection:
    """A :class:`_Wire` that is opened lazily and reopened after a drop, with bounded backoff.

    Concurrent callers share one connect attempt. After a failed attempt, callers fail at once
    until the backoff expires, so a down Redis costs them nothing but an exception.
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        connect_timeout_s: float,
        command_timeout_s: float,
        select_db: bool = True,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 0,
        probe_key: str | None = None,
    ) -> None:
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._select_db = select_db
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self.probe_key = probe_key
        self.wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._closed = False

    async def ready_wire(self) -> _Wire:
        """The open wire, connecting first if needed; raises :class:`LedgerUnavailable`."""
        wire = self.wire
        if wire is not None and not wire.broken:
            return wire
        if self._closed:
            raise LedgerUnavailable("the Redis client is closed")
        task = self._connecting
        if task is None:
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                raise LedgerUnavailable(
                    f"Redis at {self.address.endpoint} is unreachable (reconnect backoff)"
                )
            task = loop.create_task(self._open(loop))
            task.add_done_callback(consume_outcome)
            self._connecting = task
        return await join_shared(task)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Wire:
        acked: _AckedWire | None = None
        if self._replica_acks > 0:
            acked = _AckedWire(
                loop,
                self._command_timeout_s,
                self._replica_acks,
                self._replica_ack_timeout_ms,
                self.probe_key,
            )
        wire = acked or _Wire(loop, self._command_timeout_s)
        address = self.address
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: wire, address.path)
                else:
                    context = ssl.create_default_context() if address.tls else None
                    await loop.create_connection(
                        lambda: wire, address.host, address.port, ssl=context
                    )
                await self._handshake(wire)
        except BaseException as error:
            wire.fail("connect failed")
            if not isinstance(error, OSError | TimeoutError | LedgerUnavailable):
                raise  # Cancelled by close(): no backoff, the client is going away.
            self._backoff_s = min(
                max(self._backoff_s * 2, RECONNECT_BACKOFF_MIN_S), RECONNECT_BACKOFF_MAX_S
            )
            self._retry_at = loop.time() + self._backoff_s
            reason = "timed out" if isinstance(error, TimeoutError) else str(error)
            raise LedgerUnavailable(
                f"cannot connect to Redis at {address.endpoint}: {reason}"
            ) from None
        finally:
            self._connecting = None
        if self._closed:
            wire.fail("the Redis client is closed")
            raise LedgerUnavailable("the Redis client is closed")
        self._backoff_s = 0.0
        self._retry_at = 0.0
        if acked is not None:
            acked.require_acks()
        self.wire = wire
        return wire

    async def _handshake(self, wire: _Wire) -> None:
        address = self.address
        if address.password is not None:
            auth: tuple[str, ...] = (
                ("AUTH", address.username, address.password)
                if address.username
                else ("AUTH", address.password)
            )
            reply = await wire.send(pack_command(auth))
            if isinstance(reply, ReplyError):
                # The reply text is Redis's, which never echoes the password.
                raise LedgerUnavailable(f"Redis AUTH failed: {reply}")
        if self._select_db and address.db != 0:
            reply = await wire.send(pack_command(("SELECT", address.db)))
            if isinstance(reply, ReplyError):
                raise LedgerUnavailable(f"Redis SELECT {address.db} failed: {reply}")
        # One round trip before the connection counts as open: a server that accepts and then
        # refuses (maxclients, protected mode) or a proxy with no backend fails here, so the
        # reconnect backoff applies and its error never reaches a caller as a script's reply.
        reply = await wire.send(pack_command(("PING",)))
        if isinstance(reply, ReplyError):
            raise LedgerUnavailable(f"Redis refused the connection: {reply}")

    def set_probe(self, probe_key: str) -> None:
        """The key to write before each WAIT, from now on (a cluster node's, once its slots are
        known)."""
        self.probe_key = probe_key
        if isinstance(self.wire, _AckedWire):
            self.wire.set_probe(probe_key)

    async def command(self, *args: ScriptArg) -> Any:
        """Send one command and return its raw reply (error replies are returned, not raised).

        It is not waited for by replicas (``replica_acks``): the ledger writes through scripts.
        """
        wire = await self.ready_wire()
        return await wire.send_unacked(pack_command(args))

    async def close(self) -> None:
        self._closed = True
        task = self._connecting
        if task is not None:
            task.cancel()
        wire = self.wire
        self.wire = None
        if wire is not None:
            wire.fail("the Redis client is closed")
            await wire.wait_closed(self._connect_timeout_s)


async def join_shared(task: asyncio.Task[T]) -> T:
    """Await a task that several callers share, without letting one of them cancel it.

    When the shared task itself is cancelled (the client is closing), a caller that was not
    cancelled gets :class:`LedgerUnavailable` like any other failure, not a CancelledError it
    would take for its own.
    """
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and (current is None or current.cancelling() == 0):
            raise LedgerUnavailable("the Redis client is closed") from None
        raise


def consume_outcome(future: asyncio.Future[Any]) -> None:
    """A done-callback that retrieves a future's exception, which nobody else may await.

    Without it, a connect attempt whose waiters were all cancelled, or the reply of an ASKING
    on a connection that broke, is logged as "exception was never retrieved".
    """
    if not future.cancelled():
        future.exception()


class BoundedRunner:
    """What the two hot-path runners share: each script call holds a slot of the in-flight
    bound, and a call whose connection broke in flight is sent once more (:func:`resend`).
    A subclass sets ``_limiter`` and makes one attempt of a call in ``_call``."""

    _limiter: InFlightLimiter

    @property
    def in_flight(self) -> int:
        return self._limiter.in_flight

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        limiter = self._limiter
        # The limiter's fast path, inlined: this method is the gateway's hottest code.
        if limiter.in_flight < limiter.limit and not limiter.waiters:
            limiter.in_flight += 1
        else:
            await limiter.acquire()
        try:
            return await self._call(script, keys, args)
        except ConnectionDropped as dropped:
            return await resend(self._call, script, keys, args, dropped)
        finally:
            limiter.release()

    async def _call(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError


class FastRedisRunner(BoundedRunner):
    """The standalone-Redis :class:`~walletgate.ledger.runner.ScriptRunner` of the hot path.

    ``connections`` pipelined sockets are used round-robin; one is enough on a small machine
    (a batch per tick already amortizes the syscalls), more help when Redis has spare cores
    for I/O threads or the network adds latency.
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        max_in_flight: int = 1024,
        queue_wait_ms: int = 200,
        connect_timeout_ms: int = 1000,
        command_timeout_ms: int = 2000,
        connections: int = 1,
        max_waiters: int | None = None,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.address = address
        self._limiter = InFlightLimiter(
            max_in_flight,
            queue_wait_ms / 1000,
            WAITERS_PER_IN_FLIGHT * max_in_flight if max_waiters is None else max_waiters,
        )
        self._connections = [
            FastConnection(
                address,
                connect_timeout_s=connect_timeout_ms / 1000,
                command_timeout_s=command_timeout_ms / 1000,
                replica_acks=replica_acks,
                replica_ack_timeout_ms=replica_ack_timeout_ms,
                probe_key=keys.replication_probe_key(None) if replica_acks else None,
            )
            for _ in range(connections)
        ]
        self._next = 0
        self._fence_us = script_fence_us(command_timeout_ms)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FastRedisRunner:
        return cls(parse_redis_url(url), **options)

    @classmethod
    def from_config(cls, config: RedisConfig) -> FastRedisRunner:
        return cls(
            parse_redis_url(config.url),
            max_in_flight=config.max_in_flight,
            queue_wait_ms=config.queue_wait_ms,
            connect_timeout_ms=config.connect_timeout_ms,
            command_timeout_ms=config.command_timeout_ms,
            connections=config.connections,
            replica_acks=config.replica_acks,
            replica_ack_timeout_ms=config.replica_ack_timeout_ms,
        )

    def _connection(self) -> FastConnection:
        connections = self._connections
        if len(connections) == 1:
            return connections[0]
        index = self._next
        self._next = (index + 1) % len(connections)
        return connections[index]

    async def _call(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        connection = self._connection()
        wire = connection.wire
        if wire is None or wire.broken:
            wire = await connection.ready_wire()
        deadline = script_deadline(self._fence_us)
        reply = await wire.send(
            pack_command((_EVALSHA, script.sha, len(keys), *keys, *args, deadline))
        )
        if isinstance(reply, ReplyError):
            if str(reply).startswith("NOSCRIPT"):
                wire = await connection.ready_wire()
                reply = await wire.send(
                    pack_command((_EVAL, script.source, len(keys), *keys, *args, deadline))
                )
                if not isinstance(reply, ReplyError):
                    return reply
            if error_code(reply) in REPLICA_ERROR_CODES:
                wire.fail(f"the server is a replica now: {reply}")
            raise script_failure(reply)
        return reply

    async def command(self, *args: ScriptArg) -> Any:
        """One non-script command through the same bound; error replies raise like scripts."""
        await self._limiter.acquire()
        try:
            reply = await self._connection().command(*args)
        finally:
            self._limiter.release()
        if isinstance(reply, ReplyError):
            raise script_failure(reply)
        return reply

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
