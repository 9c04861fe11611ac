"""Stripe's published OpenAPI description, as a checker of the answers we give.

`../shared/stripe/spec3.json` (API version 2023-08-16) describes every
object Stripe returns. `Spec.check_response` holds an answer of ours against
it: the operation Stripe documents for the method and path gives the schema
(a 2xx its `200` schema, an error its `default` one, which is the error
object); a path Stripe does not have is checked by the body's `object` field
(`error` for an error). The checker covers the part of OpenAPI 3.0 the
description uses: `$ref`, `type`, `nullable`, `enum`, `anyOf` (which is how
an expandable field says "an id or the object": `x-expansionResources` only
annotates it), `required`, `properties`, `additionalProperties`, `items`,
`maxLength` and `pattern`. It is stricter than OpenAPI in one way, on
purpose: a field that a schema with `properties` does not list is a
violation, so a field Stripe does not send is caught rather than ignored.

`ResponseCollector` sees every response the tests' HTTP clients receive
(httpx, sync and async, and requests, which the stripe SDK and schemathesis
use) from a node's API (a path under /v1/ answered with a `Request-Id`), checks it,
and keeps the violations for the test that received them, and the counts of
what it checked. An httpx answer a test reads as a stream (to test slow
reads) is left to the test. tests/conftest.py installs it for the session and fails
the test that received a response that does not validate.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests

SPEC_PATH = Path(os.environ.get("PAYMENTS_STRIPE_SPEC", Path(__file__).resolve().parents[2] / "shared" / "stripe" / "spec3.json"))

# The id prefixes Stripe uses, by object type.
ID_PREFIXES = {
    "payment_intent": ("pi_",),
    "payment_method": ("pm_",),
    "refund": ("re_",),
    "dispute": ("dp_", "du_"),
    "event": ("evt_",),
    "webhook_endpoint": ("we_",),
    "balance_transaction": ("txn_",),
    "charge": ("ch_", "py_"),
    "setup_intent": ("seti_",),
    "customer": ("cus_",),
}

# Departures from the spec we know of and have not fixed yet, each with the
# issue that fixes it: counted and reported, not failed.
KNOWN_GAPS: dict[tuple[str, str], str] = {}

# Objects of ours that Stripe has no counterpart for, on paths Stripe has not.
EXTENSIONS = frozenset({"event_retry"})

# Cut off a checked value's description after this many characters.
SHOWN_CHARS_MAX = 60


class Spec:
    """The schemas and operations of one OpenAPI description."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.version: str = document["info"]["version"]
        self.schemas: dict[str, Any] = document["components"]["schemas"]
        self.by_object: dict[str, list[str]] = collections.defaultdict(list)
        for name, schema in self.schemas.items():
            kind = schema.get("properties", {}).get("object", {}).get("enum", [])
            if len(kind) == 1:
                self.by_object[kind[0]].append(name)
        self.operations: list[tuple[re.Pattern[str], int, dict[str, Any]]] = []
        for template, item in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")
            literal = len(re.sub(r"\{[^}]+\}", "", template))
            self.operations.append((pattern, literal, item))
        # The most literal template first: /v1/payment_intents/search before /v1/payment_intents/{intent}.
        self.operations.sort(key=lambda operation: -operation[1])

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        """The operation Stripe documents for `method` on `path`, if any."""
        for pattern, _, item in self.operations:
            if pattern.match(path):
                return item.get(method.lower())
        return None

    def schema_name_for(self, value: dict[str, Any]) -> str | None:
        """The schema of an object, by its `object` field (a deleted object by
        `deleted: true`)."""
        names = self.by_object.get(value.get("object"), [])  # type: ignore[arg-type]
        deleted = value.get("deleted") is True
        fitting = [name for name in names if ("deleted" in self.schemas[name].get("required", ())) == deleted]
        return (fitting or names or [None])[0]

    def check_object(self, value: Any, schema_name: str | None = None) -> Checked:
        """Check `value` against the schema `schema_name`, or the one its
        `object` field names."""
        walk = _Walk(self)
        if schema_name is None:
            schema_name = self.schema_name_for(value) if isinstance(value, dict) else None
        if schema_name is None:
            walk.violation("$", f"is not an object the spec knows ({_shown(value)})")
        else:
            walk.value(value, {"$ref": f"#/components/schemas/{schema_name}"}, "$")
        return walk.checked()

    def check_response(self, method: str, path: str, status: int, body: Any) -> Checked:
        """Check the body of an answer to `method` on `path` with `status`."""
        operation = self.operation(method, path)
        if operation is not None:
            responses = operation["responses"]
            answer = responses.get(str(status)) or responses.get("200" if status < 400 else "default")
            if answer is not None:
                walk = _Walk(self)
                walk.value(body, answer["content"]["application/json"]["schema"], "$")
                return walk.checked()
        if status >= 400:
            return self.check_object(body, "error")
        if isinstance(body, dict) and body.get("object") in EXTENSIONS:
            return Checked([], collections.Counter({f"{body['object']} (ours)": 1}), collections.Counter())
        return self.check_object(body)


class Checked:
    """What checking one value found: violations, and the objects checked by type."""

    def __init__(self, violations: list[str], objects: collections.Counter[str], gaps: collections.Counter[str]) -> None:
        self.violations = violations
        self.objects = objects
        self.gaps = gaps


class _Walk:
    """One check of one value, collecting violations as it goes."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.violations: list[str] = []
        self.objects: collections.Counter[str] = collections.Counter()
        self.gaps: collections.Counter[str] = collections.Counter()

    def checked(self) -> Checked:
        return Checked(self.violations, self.objects, self.gaps)

    def violation(self, where: str, message: str) -> None:
        self.violations.append(f"{where} {message}")

    def value(self, value: Any, schema: dict[str, Any], where: str, name: str = "") -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = self.spec.schemas[name]
        if value is None:
            if not schema.get("nullable"):
                self.violation(where, f"is null, which {name or 'the schema'} does not allow")
            return
        if "anyOf" in schema:
            self.any_of(value, schema["anyOf"], where)
            return
        kind = schema.get("type")
        if kind == "object":
            self.object(value, schema, where, name)
        elif kind == "array":
            if not isinstance(value, list):
                self.violation(where, f"is {_shown(value)}, not an array")
                return
            for index, item in enumerate(value):
                self.value(item, schema.get("items", {}), f"{where}[{index}]")
        elif kind is not None:
            self.scalar(value, schema, kind, where)

    def scalar(self, value: Any, schema: dict[str, Any], kind: str, where: str) -> None:
        fits = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }.get(kind, True)
        if not fits:
            self.violation(where, f"is {_shown(value)}, not of type {kind}")
            return
        if "enum" in schema and value not in schema["enum"]:
            self.violation(where, f"is {_shown(value)}, not one of {schema['enum']}")
        if isinstance(value, str):
            if len(value) > schema.get("maxLength", len(value)):
                self.violation(where, f"is longer than {schema['maxLength']} characters")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                self.violation(where, f"is {_shown(value)}, which does not match {schema['pattern']}")

    def any_of(self, value: Any, branches: list[dict[str, Any]], where: str) -> None:
        """`value` must fit one branch. Otherwise the nearest miss is
        reported: among the branches of the value's own JSON type (an
        expanded object is reported as that object, not as "not a string"),
        the one with the fewest violations."""
        misses: list[tuple[bool, int, _Walk]] = []
        for branch in branches:
            trial = _Walk(self.spec)
            trial.value(value, branch, where)
            if not trial.violations:
                self.objects.update(trial.objects)
                self.gaps.update(trial.gaps)
                return
            misses.append((not self.same_type(value, branch), len(trial.violations), trial))
        nearest = min(misses, key=lambda miss: miss[:2])[2]
        self.violations.extend(nearest.violations)

    def same_type(self, value: Any, schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            schema = self.spec.schemas[schema["$ref"].rsplit("/", 1)[1]]
        kind = schema.get("type")
        return kind is None or {"object": dict, "array": list, "string": str}.get(kind, object) is type(value) or (
            kind in ("integer", "number", "boolean") and isinstance(value, (int, float))
        )

    def object(self, value: Any, schema: dict[str, Any], where: str, name: str) -> None:
        if not isinstance(value, dict):
            self.violation(where, f"is {_shown(value)}, not an object")
            return
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if properties is None and extra is None:
            # A free-form object (an event's data.object): checked as what
            # its `object` field says it is.
            if "object" in value:
                found = self.spec.schema_name_for(value)
                if found is None:
                    self.violation(where, f"is not an object the spec knows ({_shown(value)})")
                else:
                    self.value(value, {"$ref": f"#/components/schemas/{found}"}, where)
            return
        for field in schema.get("required", ()):
            if field not in value:
                self.violation(f"{where}.{field}", f"is missing; {name or 'the schema'} requires it")
        for field, item in value.items():
            if properties is not None and field in properties:
                self.value(item, properties[field], f"{where}.{field}")
            elif isinstance(extra, dict):
                self.value(item, extra, f"{where}.{field}")
            elif properties is not None:
                self.violation(f"{where}.{field}", f"is not a field of {name or 'the schema'}")
        kind = properties.get("object", {}).get("enum", [None])[0] if properties else None
        if kind is not None and kind != "list":
            self.objects[kind] += 1
            self.id_prefix(value, kind, where)

    def id_prefix(self, value: dict[str, Any], kind: str, where: str) -> None:
        prefixes = ID_PREFIXES.get(kind)
        shown = value.get("id")
        if prefixes is None or not isinstance(shown, str) or shown.startswith(prefixes):
            return
        if (kind, "id") in KNOWN_GAPS:
            self.gaps[f"{kind}.id"] += 1
            return
        self.violation(f"{where}.id", f"is {_shown(shown)}; a {kind}'s id starts with {' or '.join(prefixes)}")


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= SHOWN_CHARS_MAX else text[: SHOWN_CHARS_MAX - 3] + "..."


_loaded: Spec | None = None
_loading = threading.Lock()


def spec() -> Spec:
    """The description in SPEC_PATH, read once."""
    global _loaded
    with _loading:
        if _loaded is None:
            _loaded = Spec(json.loads(SPEC_PATH.read_text()))
    return _loaded


class ResponseCollector:
    """Checks every answer of a node's API the tests receive; keeps each
    violation for the test that was running, and counts what it checked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.responses: collections.Counter[str] = collections.Counter()
        self.objects: collections.Counter[str] = collections.Counter()
        self.gaps: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.installed = False

    def observe(self, method: str, url: str, status: int, headers: Any, content: Callable[[], bytes]) -> None:
        """Check one answer, if it is a node's API answer: a /v1/ path,
        answered with the node's `Request-Id`. Its body is read (`content`)
        only then."""
        path = urlsplit(url).path
        if not path.startswith("/v1/") or not str(headers.get("Request-Id", "")).startswith("req_"):
            return
        if method.upper() in ("HEAD", "OPTIONS"):
            # No body (HEAD), or the framework's answer to a CORS preflight: not API objects.
            return
        where = f"{method} {path} -> {status}"
        if not str(headers.get("Content-Type", "")).startswith("application/json"):
            self.add_violations([f"{where}: not JSON ({headers.get('Content-Type')})"])
            return
        try:
            body = json.loads(content())
        except ValueError:
            self.add_violations([f"{where}: the body is not valid JSON"])
            return
        found = spec().check_response(method, path, status, body)
        kind = "error" if status >= 400 else str(body.get("object")) if isinstance(body, dict) else "?"
        with self.lock:
            self.responses[kind] += 1
            self.objects.update(found.objects)
            self.gaps.update(found.gaps)
        self.add_violations([f"{where}: {violation}" for violation in found.violations])

    def add_violations(self, violations: list[str]) -> None:
        with self.lock:
            self.violations.extend(violations)

    def take_violations(self) -> list[str]:
        """The violations seen since the last call, forgotten."""
        with self.lock:
            taken, self.violations = self.violations, []
        return taken

    @contextmanager
    def expecting_violations(self) -> Iterator[list[str]]:
        """For a test of the checker itself: the violations seen inside the
        block are handed over, not charged to the test."""
        before = self.take_violations()
        seen: list[str] = []
        try:
            yield seen
        finally:
            seen.extend(self.take_violations())
            self.add_violations(before)

    def install(self) -> None:
        """Wrap the send methods of httpx and requests, once."""
        if self.installed:
            return
        self.installed = True
        sync_send, async_send, requests_send = httpx.Client.send, httpx.AsyncClient.send, requests.Session.send
        collector = self

        def send(client: httpx.Client, request: httpx.Request, **options: Any) -> httpx.Response:
            response = sync_send(client, request, **options)
            if not options.get("stream"):
                collector.observe(request.method, str(request.url), response.status_code, response.headers, lambda: response.content)
            return response

        async def send_async(client: httpx.AsyncClient, request: httpx.Request, **options: Any) -> httpx.Response:
            response = await async_send(client, request, **options)
            if not options.get("stream"):
                collector.observe(request.method, str(request.url), response.status_code, response.headers, lambda: response.content)
            return response

        def send_requests(session: requests.Session, request: requests.PreparedRequest, **options: Any) -> requests.Response:
            # Read even when streamed (schemathesis streams every answer):
            # requests keeps what it read for the caller.
            response = requests_send(session, request, **options)
            collector.observe(str(request.method), str(request.url), response.status_code, response.headers, lambda: response.content)
            return response

        httpx.Client.send = send  # type: ignore[method-assign]
        httpx.AsyncClient.send = send_async  # type: ignore[method-assign]
        requests.Session.send = send_requests  # type: ignore[method-assign]

    def summary(self) -> list[str]:
        """Lines for the end of a test run: what was checked, by type."""
        lines = [f"responses checked against Stripe's spec {spec().version}: {sum(self.responses.values())}"]
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.responses.items())]
        lines.append("objects checked, nested ones included, by type:")
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.objects.items())]
        for gap, count in sorted(self.gaps.items()):
            lines.append(f"known gap, not failed: {gap} x{count}")
        return lines


RESPONSES = ResponseCollector()
