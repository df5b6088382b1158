"""Native core of walletgate: exact money, strict JSON, request signatures and the journal
writer's record encoder.

Everything here is implemented in Rust (``rust/``). Only ``bytes``, ``str`` and ``int`` cross the
boundary, plus :class:`JsonDecimal` for JSON numbers that are not integers (and, for
:func:`encode_journal_batch`, the writer's own entry objects and callbacks).
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar, final

__all__ = [
    "MAX_UNITS",
    "MIN_UNITS",
    "UNITS_PER_MAJOR",
    "JsonDecimal",
    "cents_to_units",
    "checked_add_units",
    "coins_to_units",
    "constant_time_eq",
    "encode_journal_batch",
    "format_units",
    "hmac_sha256_hex",
    "midas_mp_sig",
    "midas_sig",
    "minigame_sign",
    "parse_json",
    "parse_money",
    "units_to_cents",
    "units_to_coins",
    "verify_midas_mp_sig",
    "verify_midas_sig",
    "verify_minigame_sign",
]

MAX_UNITS: Final[int]
"""The largest balance or amount in units at scale 4: ``922337203685477.5807`` = ``2**63 - 1``."""
MIN_UNITS: Final[int]
"""The smallest amount in units: ``-922337203685477.5807`` = ``-(2**63 - 1)``: amounts are bounded
at ±922337203685477.5807, so ``-2**63`` is refused although it fits an int64."""
UNITS_PER_MAJOR: Final[int]
"""10000 units make one major unit (scale 4)."""

@final
class JsonDecimal:
    """A JSON number with a fraction or an exponent, kept as its exact literal text.

    Made only by :func:`parse_json`; it cannot be constructed or subclassed from Python.
    """

    @property
    def literal(self) -> str:
        """The number exactly as it appeared in the body, for example ``"33.66"``."""

def parse_json(body: bytes, max_depth: int = 32) -> Any:
    """Parse one strict UTF-8 JSON document.

    Objects become ``dict``, arrays ``list``, strings ``str``, integers ``int`` (exact, any
    length), ``true``/``false``/``null`` the Python singletons, and other numbers
    :class:`JsonDecimal` (never ``float``), ``-0`` included: the spec's integers have no sign
    on zero. Raises ``ValueError`` on invalid JSON, invalid
    UTF-8 (a BOM included), a duplicate key in any object, trailing data, or nesting deeper
    than ``max_depth`` containers (``0`` allows only a scalar; at most 10000). ``\\u`` escapes
    are decoded and surrogate pairs joined; a lone surrogate is rejected (as in I-JSON), as are
    raw control characters in strings, ``NaN``/``Infinity`` and integers longer than
    ``sys.get_int_max_str_digits()``. The reader is iterative: no input can overflow the stack.
    """

def parse_money(value: str | int | JsonDecimal) -> int:
    """Convert a decimal amount to units at scale 4.

    ``str`` is the content of a JSON string, ``int`` a JSON integer, :class:`JsonDecimal` a JSON
    number literal. The text must match ``-?(0|[1-9][0-9]*)(\\.[0-9]{1,4})?`` and lie within
    [``MIN_UNITS``, ``MAX_UNITS``] units. Raises ``ValueError`` otherwise: ``bool``, ``float``
    and every other type are rejected too, and an ``int`` must be within +-922337203685477.
    """

def format_units(units: int) -> str:
    """Format units as the MINI.GAME decimal string: no trailing zeros (``"4289.1"``, ``"0"``,
    ``"-0.0001"``). Raises ``OverflowError`` outside the int64 range (as do all ``units``
    arguments below).
    """

def units_to_cents(units: int) -> int:
    """Units to integer cents, truncating toward zero (``12345`` units -> ``123`` cents)."""

def cents_to_units(cents: int) -> int:
    """Integer cents to units (x 100). Raises ``OverflowError`` outside the int64 unit range."""

def units_to_coins(units: int) -> int:
    """Units to whole coins, truncating toward zero (x 1/10000)."""

def coins_to_units(coins: int) -> int:
    """Whole coins to units (x 10000). Raises ``OverflowError`` outside the int64 unit range."""

def checked_add_units(a: int, b: int) -> int:
    """``a + b`` in units. Raises ``OverflowError`` when the sum leaves the int64 range."""

def minigame_sign(raw_query: bytes, raw_body: bytes, key: bytes) -> str:
    """``lowercase_hex(md5(raw_query + raw_body + key))``, the MINI.GAME/OMG ``sign`` header."""

def verify_minigame_sign(
    raw_query: bytes, raw_body: bytes, key: bytes, sign: bytes | str | None
) -> bool:
    """Check a ``sign`` header in constant time; ASCII case is ignored; ``None`` fails.

    A ``str`` is compared as UTF-8; one that cannot be encoded fails. Other types raise
    ``TypeError``.
    """

def midas_sig(params: Sequence[tuple[str, str]], org_loc: str, app_key: str) -> str:
    """The Midas ``sig``: HMAC-SHA256 (key ``app_key``) over the sorted ``k=v&…`` string of
    ``params`` + ``&org_loc=<org_loc>&method=POST&secret=<app_key>``, lowercase hex. ``params``
    must already exclude ``sig``, ``mp_sig`` and ``access_token``.
    """

def midas_mp_sig(params: Sequence[tuple[str, str]], org_loc: str, session_key: str) -> str:
    """The Midas ``mp_sig``: as :func:`midas_sig` with ``&session_key=<session_key>`` and the
    session_key (as text) as HMAC key. ``params`` must include ``access_token`` and ``sig``.
    """

def verify_midas_sig(
    params: Sequence[tuple[str, str]], org_loc: str, app_key: str, sig: bytes | str | None
) -> bool:
    """Check a Midas ``sig`` in constant time (lowercase hex expected, no case folding;
    ``None`` fails)."""

def verify_midas_mp_sig(
    params: Sequence[tuple[str, str]], org_loc: str, session_key: str, mp_sig: bytes | str | None
) -> bool:
    """Check a Midas ``mp_sig`` in constant time (lowercase hex expected, no case folding;
    ``None`` fails)."""

def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    """Lowercase hex HMAC-SHA256, used for the WeChat login-state reference vector."""

def constant_time_eq(a: bytes | str, b: bytes | str) -> bool:
    """Compare two secrets in constant time (length differences return ``False``).

    A ``str`` is compared as its UTF-8 bytes, so ``"abc"`` equals ``b"abc"``; a ``str`` that
    cannot be encoded (lone surrogates) equals nothing.
    """

_Meta = TypeVar("_Meta")

def encode_journal_batch(
    entries: Iterable[Any],
    batch: int | None,
    keymap_ttl_s: int,
    meta_type: Callable[..., _Meta],
    fallback: Callable[[Any], tuple[bytes, _Meta]],
) -> tuple[bytes, list[_Meta]]:
    """The journal lines (each ended by a newline) and the metadata of pending-journal stream
    entries: ``walletgate.journal.records.encode_batch``.

    Each entry is a ``StreamEntry`` (``bucket``, ``stream``, ``sid``, ``fields``). An entry whose
    ``fields`` is a flat list of ``bytes`` is encoded natively when it is provably handled
    exactly as the reference path does, and its metadata is
    ``meta_type(stream, sid, tenant, player, currency, seq, key, protocol, keymap_expire_at_s,
    False, other_keys)``. Every other entry (malformed ones included) is handed to
    ``fallback(entry)``, which returns its line (without newline) and metadata; its exceptions
    propagate. Other threads may take the GIL between slices of a long batch.
    """
