"""Errors the ledger raises to the protocol layer."""


class LedgerUnavailable(Exception):
    """Redis could not be reached, timed out or is saturated: nothing was applied.

    Every protocol maps this to its "system busy" answer (10015, INTERNAL_ERROR, -1, 503).
    For a command that was written but whose answer never came, "nothing was applied" is made
    true by idempotency: the client's retry replays the stored outcome.
    """


class LedgerScriptError(Exception):
    """A script raised an error: a bug or a broken invariant, never a business outcome."""
