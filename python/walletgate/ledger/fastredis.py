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
    except (NotReplicated, OutcomeUnknown):
        raise  # Its own cause is the one to report.
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
_PING: Final = pack_command(("PING",))
_INFO_SERVER: Final = pack_command(("INFO", "server"))


def _run_id(info: Any) -> str:
    """The ``run_id`` of an ``INFO server`` reply (a new one each time a server starts)."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:").strip()
    raise LedgerUnavailable("the server did not say its run_id (INFO server)")


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
        # The server's run_id, learned at the handshake when replies wait for replicas: which
        # server ran a call and which one a WAIT asked must be the same.
        self.run_id: str | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            self._take_replies(reader)
        except hiredis.ProtocolError as error:
            self.fail(f"Redis protocol error: {error}")
            return
        except IndexError:
            self.fail("Redis sent a reply nobody asked for")
            return
        if reader.len() > MAX_REPLY_BUFFER_BYTES:
            self.fail(f"Redis reply larger than {MAX_REPLY_BUFFER_BYTES} bytes")

    def _take_replies(self, reader: hiredis.Reader) -> None:
        """Give every whole reply parsed so far to its command's future, oldest first."""
        pending = self._pending
        reply = reader.gets()
        while reply is not False:
            future = pending.popleft()
            if not future.done():
                future.set_result(reply)
            reply = reader.gets()

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


class ReplicaProbe:
    """Whether ``replica_acks`` replicas hold everything a server had applied when asked: a
    probe key is written, and ``WAIT`` follows it on the same connection. WAIT waits for the
    replicas to reach that connection's last write, the probe, which the server applied after
    all it had applied before. Used by the hot path's :class:`ReplicaGate` and by the journal
    writer (``walletgate.journal.replication``)."""

    def __init__(self, replica_acks: int, ack_timeout_ms: int) -> None:
        assert replica_acks >= 1 and ack_timeout_ms >= 1
        self._replica_acks = replica_acks
        self._ack_timeout_ms = ack_timeout_ms
        self._wait_packed = pack_command(("WAIT", replica_acks, ack_timeout_ms))

    async def ask(self, connection: FastConnection, probe_key: str) -> tuple[str | None, str]:
        """(None, the run_id of the server asked) when enough replicas confirmed, else (why
        not, ""). A refused probe (a demoted primary, a moved slot) wrote nothing, so the WAIT
        says nothing; the connection is then dropped, and the next ask connects again. Raises
        :class:`LedgerUnavailable` when the connection fails."""
        wire = await connection.ready_wire()
        # Written together, so the WAIT follows the probe on the same connection.
        probe = wire.send_unacked(pack_command(("SET", probe_key, "1")))
        waited = wire.send_unacked(self._wait_packed)
        probe_reply = await probe
        wait_reply = await waited
        if isinstance(probe_reply, ReplyError):
            reason = f"the probe write was refused: {probe_reply}"
            wire.fail(reason)
            return reason, ""
        if isinstance(wait_reply, int) and wait_reply >= self._replica_acks:
            return None, wire.run_id or ""
        return (
            f"applied on the primary, but {wait_reply} of {self._replica_acks} replicas "
            f"confirmed it within {self._ack_timeout_ms} ms"
        ), ""


CLOSED_BEFORE_REPLICAS: Final = "the Redis client closed before the replicas confirmed the call"


class ReplicaGate:
    """Holds the replies of one connection's script calls until enough replicas hold what
    they report (``[redis] replica_acks``).

    The calls' own connection never waits: a blocked WAIT would hold every later command on
    it, and a WAIT per batch would stack up behind a lagging replica until the command timeout
    broke the connection. Instead the replies are handed here as they arrive, and a connection
    of the gate's own writes the probe key and sends ``WAIT <replica_acks> <timeout>``: WAIT
    waits for the replicas to reach that connection's last write, the probe, which the primary
    applied after every held call had run. One WAIT thus confirms every reply held before it
    was sent, what those calls only read included, and replays too: a replay writes nothing,
    and Redis 7.2 and later leave a connection that did not write at its old position, where
    WAIT answers at once. One WAIT is outstanding at a time; replies that arrive meanwhile wait
    for the next. When fewer replicas confirm within the timeout, each held reply becomes
    :class:`NotReplicated` (the call was applied on the primary; its retry replays it).

    Each reply carries the run_id of the server that ran it, and a WAIT confirms only replies
    of the server it was asked on: a failover that moves the address (a virtual IP, a DNS
    name) may reconnect the gate to another server, whose replicas never had those calls.
    There is one gate per calls' connection (``[redis] connections`` per node).
    """

    def __init__(
        self,
        connection: FastConnection,
        replica_acks: int,
        ack_timeout_ms: int,
        probe_key: str | None,
    ) -> None:
        self._connection = connection
        self._probe = ReplicaProbe(replica_acks, ack_timeout_ms)
        self.probe_key = probe_key
        # Replies received and not yet sent to a WAIT, oldest first, with the run_id of the
        # server that ran each call.
        self._held: list[tuple[asyncio.Future[Any], Any, str | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def set_probe(self, probe_key: str | None) -> None:
        """The key written before each WAIT (None until a cluster node's slots are known; no
        reply is confirmed without a probe)."""
        self.probe_key = probe_key

    def hold(self, future: asyncio.Future[Any], reply: Any, run_id: str | None) -> None:
        """Pass ``reply`` to ``future`` once the replicas hold it (called in reply order);
        ``run_id`` names the server that ran the call."""
        if self._closed:
            future.set_exception(OutcomeUnknown(CLOSED_BEFORE_REPLICAS))
            return
        self._held.append((future, reply, run_id))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._confirm())

    async def _confirm(self) -> None:
        try:
            while self._held:
                batch = self._held
                self._held = []
                try:
                    failure, asked = await self._ask_replicas(len(batch))
                except BaseException:
                    # Cancelled by close(): the batch is no longer in _held, so its callers
                    # are answered here or they would wait for ever.
                    for future, _, _ in batch:
                        if not future.done():
                            future.set_exception(OutcomeUnknown(CLOSED_BEFORE_REPLICAS))
                    raise
                if asked is not None and any(ran_on != asked for _, _, ran_on in batch):
                    # The calls ran elsewhere than where the gate asked: the next round must
                    # ask from a new connection, which reaches wherever the address does now.
                    self._drop_connection("the calls ran on another server")
                for future, reply, ran_on in batch:
                    if future.done():
                        continue  # The caller went away; its call ran all the same.
                    if failure is not None:
                        future.set_exception(failure)
                    elif ran_on is None or ran_on != asked:
                        # The address reaches another server now (a failover moved a virtual IP
                        # or a DNS name): its replicas say nothing of the server that ran it.
                        future.set_exception(
                            NotReplicated(
                                "applied on a server the address no longer reaches; its "
                                "replicas could not be asked"
                            )
                        )
                    else:
                        future.set_result(reply)
        finally:
            self._task = None

    async def _ask_replicas(self, calls: int) -> tuple[NotReplicated | None, str | None]:
        """One probe and WAIT: (None, the run_id of the server asked) when enough replicas
        confirmed, else (the error to give, None). A gate connection that breaks is opened
        again once (the calls ran; only the answer of the replicas is missing); whether it
        reaches the same server is the caller's check."""
        reason = "no probe key for this node yet"
        for _ in range(2):
            if self.probe_key is None:
                break
            try:
                refused, run_id = await self._probe.ask(self._connection, self.probe_key)
            except LedgerUnavailable as error:
                reason = f"cannot ask the replicas: {error}"
                continue
            if refused is None:
                return None, run_id
            reason = refused
            break
        return NotReplicated(f"{reason} ({calls} calls)"), None

    def _drop_connection(self, reason: str) -> None:
        wire = self._connection.wire
        if wire is not None:
            wire.fail(reason)

    async def close(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future, _, _ in self._held:
            if not future.done():
                future.set_exception(OutcomeUnknown(CLOSED_BEFORE_REPLICAS))
        self._held = []
        await self._connection.close()


class _AckedWire(_Wire):
    """A wire whose script replies go through a :class:`ReplicaGate` before their callers see
    them. Error replies pass at once (a command that failed wrote nothing), and so do the
    handshake's (sent before :meth:`require_acks`) and those of :meth:`send_unacked`
    (CLUSTER SLOTS)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, command_timeout_s: float, gate: ReplicaGate
    ) -> None:
        super().__init__(loop, command_timeout_s)
        self._gate = gate
        self._acks_required = False
        self._unacked: set[asyncio.Future[Any]] = set()

    def require_acks(self) -> None:
        """From now on, the replies of :meth:`send` wait for the replicas."""
        self._acks_required = True

    def send_unacked(self, packed: bytes) -> asyncio.Future[Any]:
        future = self.send(packed)
        if not future.done():
            self._unacked.add(future)
        return future

    def _take_replies(self, reader: hiredis.Reader) -> None:
        pending = self._pending
        unacked = self._unacked
        gate = self._gate
        reply = reader.gets()
        while reply is not False:
            future = pending.popleft()
            if future in unacked:
                unacked.discard(future)
                if not future.done():
                    future.set_result(reply)
            elif self._acks_required and not isinstance(reply, ReplyError):
                gate.hold(future, reply, self.run_id)
            elif not future.done():
                future.set_result(reply)
            reply = reader.gets()

    def fail(self, reason: str, *, dropped: bool = False) -> None:
        self._unacked.clear()
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
        identify: bool = False,
    ) -> None:
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._select_db = select_db
        self.probe_key = probe_key
        self._identify = identify or replica_acks > 0
        # The gate and its own connection to the same node, when replies wait for replicas.
        self._gate: ReplicaGate | None = None
        if replica_acks > 0:
            gate_connection = FastConnection(
                address,
                connect_timeout_s=connect_timeout_s,
                command_timeout_s=command_timeout_s,
                select_db=select_db,
                identify=True,
            )
            self._gate = ReplicaGate(
                gate_connection, replica_acks, replica_ack_timeout_ms, probe_key
            )
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
        if self._gate is not None:
            acked = _AckedWire(loop, self._command_timeout_s, self._gate)
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
        # With replica_acks it also tells which server this is (INFO server's run_id).
        reply = await wire.send(_INFO_SERVER if self._identify else _PING)
        if isinstance(reply, ReplyError):
            raise LedgerUnavailable(f"Redis refused the connection: {reply}")
        if self._identify:
            wire.run_id = _run_id(reply)

    def set_probe(self, probe_key: str) -> None:
        """The key to write before each WAIT, from now on (a cluster node's, once its slots are
        known)."""
        self.probe_key = probe_key
        if self._gate is not None:
            self._gate.set_probe(probe_key)

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
        if self._gate is not None:
            await self._gate.close()


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
