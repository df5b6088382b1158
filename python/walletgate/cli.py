"""``walletgate serve | demo | journal verify | journal rebuild``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from walletgate import __version__
from walletgate.config import Config, ConfigError, load_config

EXIT_CONFIG_ERROR = 2


def _config_path(arguments: argparse.Namespace) -> str:
    path = arguments.config or os.environ.get("WALLETGATE_CONFIG")
    if not path:
        raise ConfigError("no config: pass --config FILE or set WALLETGATE_CONFIG")
    return str(Path(path).resolve())


def serve(
    config_path: str,
    config: Config,
    *,
    host: str | None,
    port: int | None,
    workers: int | None,
    access_log: bool,
) -> None:
    """Run Granian with every option written out (ASGI, uvloop, HTTP/1, backpressure)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    os.environ["WALLETGATE_CONFIG"] = config_path
    os.environ["WALLETGATE_ACCESS_LOG"] = "1" if access_log else "0"
    metrics_dir = tempfile.mkdtemp(prefix="walletgate-metrics-")
    os.environ["WALLETGATE_METRICS_DIR"] = metrics_dir
    server = Granian(
        target="walletgate.app:app_from_env",
        factory=True,
        address=host or config.server.host,
        port=port if port is not None else config.server.port,
        interface=Interfaces.ASGI,
        workers=workers or config.server.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        backlog=config.server.backlog,
        backpressure=config.server.backpressure,
        log_access=False,
        respawn_failed_workers=True,
    )
    server.serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="walletgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"walletgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="serve the gateway with Granian")
    serve_parser.add_argument("--config", help="TOML config (default: $WALLETGATE_CONFIG)")
    serve_parser.add_argument("--host")
    serve_parser.add_argument("--port", type=int)
    serve_parser.add_argument("--workers", type=int)
    serve_parser.add_argument("--no-access-log", action="store_true")

    demo_parser = commands.add_parser("demo", help="start a local demo: redis, config, players")
    demo_parser.add_argument("--dir", default=".run/demo", help="where data and config go")
    demo_parser.add_argument("--port", type=int, default=8080)
    demo_parser.add_argument("--workers", type=int, default=1)
    demo_parser.add_argument("--redis-url", help="use this Redis instead of starting one")

    journal_parser = commands.add_parser("journal", help="journal tools")
    journal_commands = journal_parser.add_subparsers(dest="journal_command", required=True)
    for name in ("verify", "rebuild"):
        sub = journal_commands.add_parser(name)
        sub.add_argument("--config", help="TOML config (default: $WALLETGATE_CONFIG)")

    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "serve":
            path = _config_path(arguments)
            config = load_config(path)
            if arguments.workers is not None and not 1 <= arguments.workers <= 64:
                raise ConfigError("--workers must be between 1 and 64")
            serve(
                path,
                config,
                host=arguments.host,
                port=arguments.port,
                workers=arguments.workers,
                access_log=not arguments.no_access_log,
            )
            return 0
        if arguments.command == "demo":
            from walletgate.demo import run_demo

            return run_demo(
                Path(arguments.dir),
                port=arguments.port,
                workers=arguments.workers,
                redis_url=arguments.redis_url,
            )
        if arguments.command == "journal":
            from walletgate.journal.commands import rebuild_command, verify_command

            path = _config_path(arguments)
            if arguments.journal_command == "verify":
                return verify_command(path)
            return rebuild_command(path)
    except ConfigError as error:
        print(f"walletgate: invalid config: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
