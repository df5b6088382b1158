"""The baseline for bench/run: a bare Starlette endpoint on Granian returning a constant body.

It serves the same paths wrk replays against walletgate, reads the request body (as any POST
handler must) and answers a constant MINI.GAME success envelope, so the walletgate/bare ratio
isolates what walletgate adds: parsing, signature, validation, Redis and the journal.

Granian is started with the same explicit options as ``walletgate serve`` (cli.py): ASGI,
uvloop, HTTP/1, no websockets, the same backlog and backpressure, no access log.

    python bench/bare_app.py --host 127.0.0.1 --port 8081 --workers 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"data":{"balance":"100"},"code":1,"msg":"ok"}'
HEALTH = b'{"status":"ok"}'
# The defaults of walletgate's [server] section (config.ServerConfig).
BACKLOG = 1024
BACKPRESSURE = 256


async def change_balance(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(HEALTH, media_type="application/json")


app = Starlette(
    routes=[
        Route("/api/balance/change_balance", change_balance, methods=["POST"]),
        Route("/api/luck/balance/change_balance", change_balance, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


def main(argv: list[str] | None = None) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=1)
    arguments = parser.parse_args(argv)
    # Granian's workers import the target by name: make this directory importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    Granian(
        target="bare_app:app",
        address=arguments.host,
        port=arguments.port,
        interface=Interfaces.ASGI,
        workers=arguments.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        backlog=BACKLOG,
        backpressure=BACKPRESSURE,
        log_access=False,
        respawn_failed_workers=True,
    ).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
