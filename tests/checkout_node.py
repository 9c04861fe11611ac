"""`payments up` with the checkout mounted (gateway/checkout.py), for the
checkout's tests: `python -m tests.checkout_node up ...` takes the same
arguments. Once payments/up.py mounts the checkout itself this is plain
`payments up`, and the mount is not added twice."""

from __future__ import annotations

import sys
from typing import Any

from gateway import checkout
from payments import cli, up


def with_checkout() -> None:
    """Have `payments up` add the checkout to the mounts it passes the app,
    selling as the local test merchant it made."""
    serve, make_app = up._serve, up.create_app

    async def serve_with_checkout(*arguments: Any) -> None:
        keys = arguments[-1]
        up.create_app = lambda node, *, mounts=(): make_app(node, mounts=[*mounts, checkout.mount(keys)])
        await serve(*arguments)

    up._serve = serve_with_checkout


if __name__ == "__main__":
    if not hasattr(up, "checkout"):
        with_checkout()
    sys.exit(cli.main())
