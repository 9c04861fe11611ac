"""A bare quart-trio JSON endpoint on the node's hypercorn settings: the
HTTP baseline. What the gateway costs on top of it is the gateway's (and
the engine's) own.

    python -m bench.bare_server [--port 0]

prints `bare server: listening on URL` and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys

import msgspec
import trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from gateway.listener import hypercorn_config

_json = msgspec.json.Encoder()


def create_app() -> QuartTrio:
    app = QuartTrio("bench-bare")

    @app.post("/v1/echo")
    async def echo() -> Response:
        body = await request.get_data(as_text=False)
        return Response(_json.encode({"object": "echo", "id": "echo_1", "bytes": len(body)}), content_type="application/json")

    return app


async def main(host: str, port: int) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(create_app(), hypercorn_config(host, port), shutdown_trigger=stop.wait, task_status=task_status))
        print(f"bare server: listening on {binds[0]}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    trio.run(main, arguments.host, arguments.port)
    sys.exit(0)
