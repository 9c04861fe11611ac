"""`payments receiver`: run the merchant webhook receiver (simulators/receiver.py).

Wired into the `payments` command by `register(commands)`; the parser it adds
carries its handler as `arguments.handler`. Also runs on its own:
`python -m simulators.receiver --help`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys

import structlog
import trio

from simulators import receiver as receiver_module

DESCRIPTION = (
    "Run a merchant webhook endpoint for tests and demos. It checks each delivery's"
    " Stripe-Signature (t=...,v1=hex HMAC-SHA256 of 't.body' keyed with the secret),"
    " records it, and answers as its mode says. Control it over HTTP: POST /_control/mode"
    ' {"mode": "ok|fail|timeout|slow", "status": 500, "delay_ms": 2000, "count": N, "for_s": S};'
    ' POST /_control/secrets {"path": "/hooks/a", "secret": "whsec_..."};'
    " GET /_control/deliveries?after=N&limit=M&event_id=evt_...; POST /_control/reset."
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a port number from 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("expected a port number from 0 to 65535")
    return value


def _path_secret(text: str) -> tuple[str, str]:
    path, equals, secret = text.partition("=")
    if not equals or not path.startswith("/") or path.startswith("/_control"):
        raise argparse.ArgumentTypeError("expected /PATH=SECRET, e.g. /hooks/a=whsec_abc")
    if len(path) > receiver_module.PATH_CHARS_MAX or not 1 <= len(secret) <= receiver_module.SECRET_CHARS_MAX:
        raise argparse.ArgumentTypeError(
            f"the path is at most {receiver_module.PATH_CHARS_MAX} characters and the secret"
            f" 1 to {receiver_module.SECRET_CHARS_MAX}"
        )
    return path, secret


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 86400") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 86400")
    return value


def add_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=_port, default=8070, help="port to listen on; 0 picks a free one (default 8070)")
    command.add_argument(
        "--secret",
        default=os.environ.get("PAYMENTS_RECEIVER_SECRET"),
        help="signing secret for every path without its own (default $PAYMENTS_RECEIVER_SECRET);"
        " without any secret, deliveries are accepted and recorded as unverified",
    )
    command.add_argument(
        "--path-secret", type=_path_secret, action="append", default=[], metavar="/PATH=SECRET",
        help="a secret for one path; may be repeated",
    )
    command.add_argument(
        "--tolerance-s", type=_tolerance, default=receiver_module.TOLERANCE_S_DEFAULT, metavar="SECONDS",
        help=f"how far a signature's timestamp may be from now (default {receiver_module.TOLERANCE_S_DEFAULT})",
    )
    command.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add the `receiver` subcommand to the `payments` command's subparsers."""
    command = commands.add_parser(
        "receiver", help="run a merchant webhook endpoint that verifies and records deliveries", description=DESCRIPTION
    )
    add_arguments(command)
    command.set_defaults(handler=command_receiver)
    return command


def command_receiver(arguments: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; prints the URL once listening."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(
                    receiver_module.run_receiver,
                    path_secrets=dict(arguments.path_secret),
                    tolerance_s=arguments.tolerance_s,
                ),
                arguments.host,
                arguments.port,
                arguments.secret,
            )
            print(f"payments receiver: listening on {url}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    status = 0
    try:
        trio.run(main)
    except* OSError as group:
        # A port already taken, an address not on this machine.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        reason = getattr(error, "strerror", None) or type(error).__name__
        print(f"error: cannot listen on {arguments.host}:{arguments.port}: {reason}", file=sys.stderr)
        status = 2
    except* KeyboardInterrupt:
        status = 130
    return status


def main(argv: list[str] | None = None) -> int:
    """`python -m simulators.receiver`: the same options as `payments receiver`."""
    parser = argparse.ArgumentParser(prog="python -m simulators.receiver", description=DESCRIPTION)
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[arguments.log_level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    return command_receiver(arguments)
