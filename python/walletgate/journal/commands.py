"""The ``walletgate journal verify|rebuild --config FILE`` commands (wired into cli.py).

Each loads the config, runs the replay and returns the process exit code: 0 success, 1
differences or journal problems (printed one per line on stdout), 2 error (on stderr).
"""

from __future__ import annotations

import asyncio
import sys

from walletgate.config import Config, ConfigError, load_config
from walletgate.journal import replay


def _load(config_path: str, command: str) -> Config | None:
    try:
        # The journal is only read here, so a missing directory is reported, not created.
        return load_config(config_path, check_journal_dir=False)
    except ConfigError as error:
        print(f"journal {command}: {error}", file=sys.stderr)
        return None


def verify_command(config_path: str) -> int:
    """Recompute every account from the journal and compare it with Redis."""
    config = _load(config_path, "verify")
    if config is None:
        return 2
    code = asyncio.run(replay.verify(config))
    if code == 0:
        print("journal verify: the journal and redis agree")
    elif code == 1:
        print("journal verify: differences found (listed above)", file=sys.stderr)
    return code


def rebuild_command(config_path: str) -> int:
    """Restore an empty Redis (every primary at DBSIZE 0) from the journal."""
    config = _load(config_path, "rebuild")
    if config is None:
        return 2
    code = asyncio.run(replay.rebuild(config))
    if code == 0:
        print("journal rebuild: done; register sessions again (they are not journaled)")
    elif code == 1:
        print("journal rebuild: done, but the journal has problems (listed above)", file=sys.stderr)
    return code
