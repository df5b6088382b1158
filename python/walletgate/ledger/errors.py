"""Errors the ledger raises to the protocol layer."""


class LedgerUnavailable(Exception):
    """Redis could not be reached, timed out or is saturated: nothing was applied.

    Every protocol maps this to its "system busy" answer (10015, INTERNAL_ERROR, -1, 503).
    For a command that was written but whose answer never came, "nothing was applied" is made
    true by idempotency: the client's retry replays the stored outcome.
    """


class ConnectionDropped(LedgerUnavailable):
    """The connection broke (closed or reset) while a call was in flight: the call may or may
    not have run. A runner sends it once more on a fresh connection (a script that is not
    marked ``-- resend: unsafe``): the scripts are idempotent, so that either runs the call or
    replays the outcome it had, and the caller learns which instead of "busy"."""


class OutcomeUnknown(LedgerUnavailable):
    """A call may have run, but its outcome could not be learned: its connection broke in
    flight and sending it again failed too (or the script may not be sent twice). Protocols
    answer "busy" as for any unavailability; the client's retry with the same key learns the
    outcome, since the call is idempotent."""


class NotReplicated(OutcomeUnknown):
    """A call ran on the primary, but fewer replicas than ``[redis] replica_acks`` confirmed it
    within ``replica_ack_timeout_ms``: a failover now could lose it. Protocols answer "busy";
    the client's retry with the same key replays the outcome (and waits for the replicas
    again), so a movement is never acknowledged before enough replicas hold it."""


class LedgerScriptError(Exception):
    """A script raised an error: a bug or a broken invariant, never a business outcome."""
