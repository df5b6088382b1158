"""``walletgate serve | demo | journal verify | journal rebuild | journal archive``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson

from walletgate import __version__
from walletgate.config import Config, ConfigError, bind_address, load_config
from walletgate.journal.archive import DEFAULT_COMPRESS_LEVEL
from walletgate.journal.observer import SIDECAR_STATE_FILE
from walletgate.logs import GRANIAN_LOG_CONFIG
from walletgate.supervision import SUPERVISOR_PID_ENV

EXIT_CONFIG_ERROR = 2
SIDECAR_STOP_TIMEOUT_S = 30.0
SIDECAR_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
MAX_ARCHIVE_MIN_AGE_S = 10 * 365 * 86400


def _seconds(text: str) -> float:
    """A command-line duration: a finite number of seconds from 0 to ten years."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_ARCHIVE_MIN_AGE_S:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and {MAX_ARCHIVE_MIN_AGE_S}")
    return value


class JournalSidecar:
    """The journal writer as a process of its own beside the Granian workers, restarted when it
    dies, so that journal encoding and fsync never take a worker's GIL from its requests."""

    def __init__(self, config_path: str, state_path: Path) -> None:
        self.command = [sys.executable, "-m", "walletgate.journal.writer", "--config", config_path]
        # Where the workers read how often the writer was restarted (see JournalObserver).
        self.state_path = state_path
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        # Held while a process is started or stopped, so that stop() never misses a restart
        # that the supervisor makes at the same moment (it would outlive the gateway).
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._supervise, name="journal-sidecar", daemon=True)

    def start(self) -> None:
        self._publish_state(restarts=0)
        with self.lock:
            self.process = subprocess.Popen(self.command)
        self.thread.start()

    def _publish_state(self, restarts: int) -> None:
        """Write the restart count atomically: a worker never reads half a file."""
        temporary = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}")
        temporary.write_bytes(orjson.dumps({"restarts": restarts}))
        os.replace(temporary, self.state_path)

    def _supervise(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            process = self.process
            assert process is not None
            code = process.wait()
            if self.stopping.is_set():
                return
            delay_s = SIDECAR_RESTART_BACKOFF_S[min(failures, len(SIDECAR_RESTART_BACKOFF_S) - 1)]
            failures += 1
            # Published at once, so that a worker starting during the backoff already knows.
            with contextlib.suppress(OSError):
                self._publish_state(restarts=failures)
            print(
                f"walletgate: journal writer exited ({code}); restarting in {delay_s} s",
                file=sys.stderr,
                flush=True,
            )
            if self.stopping.wait(delay_s):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                self.process = subprocess.Popen(self.command)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=SIDECAR_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.thread.ident is not None:
            self.thread.join(timeout=SIDECAR_STOP_TIMEOUT_S)


def _config_path(arguments: argparse.Namespace) -> str:
    path = arguments.config or os.environ.get("WALLETGATE_CONFIG")
    if not path:
        raise ConfigError("no config: pass --config FILE or set WALLETGATE_CONFIG")
    return str(Path(path).resolve())


class CannotListen(Exception):
    """The address to serve on is taken (or not ours): said before anything starts."""


def _check_can_listen(address: str, port: int) -> None:
    """Bind the address once, before the journal writer and Granian start: Granian reports a
    taken port only from its workers' start, as a stack trace, after the writer has started."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise CannotListen(
                f"cannot listen on {address} port {port}: {error.strerror}"
            ) from None


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

    address = host or config.server.host
    port = port if port is not None else config.server.port
    _check_can_listen(address, port)

    os.environ["WALLETGATE_CONFIG"] = config_path
    # The workers and the journal writer stop by themselves if this process dies unannounced.
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
    os.environ["WALLETGATE_ACCESS_LOG"] = "1" if access_log else "0"
    metrics_dir = tempfile.mkdtemp(prefix="walletgate-metrics-")
    os.environ["WALLETGATE_METRICS_DIR"] = metrics_dir
    sidecar = (
        JournalSidecar(config_path, Path(metrics_dir) / SIDECAR_STATE_FILE)
        if config.journal.enabled
        else None
    )
    if sidecar is not None:
        os.environ["WALLETGATE_JOURNAL_SIDECAR"] = "1"
        sidecar.start()
    else:
        print(
            "walletgate: [journal] enabled = false: this gateway runs no journal writer. Every "
            "money operation still appends its record to the pending streams in Redis, which "
            "grow until a writer (python -m walletgate.journal.writer --config FILE) drains them.",
            file=sys.stderr,
            flush=True,
        )
    server = Granian(
        target="walletgate.app:app_from_env",
        factory=True,
        address=address,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers or config.server.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        backlog=config.server.backlog,
        backpressure=config.server.backpressure,
        log_access=False,
        log_dictconfig=GRANIAN_LOG_CONFIG,
        respawn_failed_workers=True,
    )
    try:
        server.serve()
    finally:
        if sidecar is not None:
            sidecar.stop()
        # The workers are gone (Granian waited for them): their snapshots served this run only.
        shutil.rmtree(metrics_dir, ignore_errors=True)


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
    for name in ("verify", "rebuild", "archive"):
        sub = journal_commands.add_parser(name)
        sub.add_argument("--config", help="TOML config (default: $WALLETGATE_CONFIG)")
        if name == "archive":
            sub.add_argument(
                "--level",
                type=int,
                choices=range(1, 10),
                default=DEFAULT_COMPRESS_LEVEL,
                metavar="1-9",
                help="gzip level (default %(default)s)",
            )
            sub.add_argument(
                "--min-age-s",
                type=_seconds,
                default=0.0,
                help="only segments unchanged for this long (default 0)",
            )

    claims_parser = commands.add_parser(
        "backfill-claims",
        help="once after upgrading: claims for adjustments stored before claims existed",
    )
    claims_parser.add_argument("--config", help="TOML config (default: $WALLETGATE_CONFIG)")

    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "serve":
            path = _config_path(arguments)
            config = load_config(path)
            if arguments.workers is not None and not 1 <= arguments.workers <= 64:
                raise ConfigError("--workers must be between 1 and 64")
            if arguments.port is not None and not 0 <= arguments.port <= 65535:
                raise ConfigError("--port must be between 0 and 65535")
            if arguments.host is not None:
                bind_address(arguments.host, "--host")
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
        if arguments.command == "backfill-claims":
            from walletgate.ledger.claims import backfill_command

            return backfill_command(_config_path(arguments))
        if arguments.command == "journal":
            from walletgate.journal.commands import (
                archive_command,
                rebuild_command,
                verify_command,
            )

            path = _config_path(arguments)
            if arguments.journal_command == "verify":
                return verify_command(path)
            if arguments.journal_command == "archive":
                return archive_command(path, level=arguments.level, min_age_s=arguments.min_age_s)
            return rebuild_command(path)
    except ConfigError as error:
        print(f"walletgate: invalid config: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except CannotListen as error:
        print(f"walletgate: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
