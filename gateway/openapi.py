"""OpenAPI 3.1, generated from the app's own routes and msgspec types.

A route is published by decorating its view with `api(...)`, naming the
Structs of its body, query and response; paths and methods come from the
app's URL map. Nothing here is written by hand per route, so the document
cannot drift from the code: a route another module adds with a params
Struct for its body appears with that body, and tests/test_openapi.py holds
every /v1 route of the URL map against the document.

A body is described twice, from the one Struct: as
`application/x-www-form-urlencoded`, the way Stripe's SDKs send it (nested
fields in brackets: the `deepObject` style, as Stripe's own description
says for its object and array parameters), and as `application/json`,
which the API also reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from gateway.objects import ErrorObject

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{name}"


class ApiDoc(msgspec.Struct, frozen=True):
    summary: str
    response: Any
    body: Any = None
    query: Any = None
    publishable: bool = False


def api(summary: str, response: Any, *, body: Any = None, query: Any = None, publishable: bool = False) -> Callable[[F], F]:
    """Publish the decorated route in /openapi.json."""

    def mark(view: F) -> F:
        view.__api__ = ApiDoc(summary, response, body, query, publishable)  # type: ignore[attr-defined]
        return view

    return mark


def _query_parameters(query: Any, components: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = []
    for field in msgspec.structs.fields(query):
        (schema,), more = msgspec.json.schema_components([field.type], ref_template=REF_TEMPLATE)
        components.update(more)
        parameter: dict[str, Any] = {"name": field.encode_name, "in": "query", "required": field.required, "schema": schema}
        if "$ref" in schema or "anyOf" in schema:
            # Filters such as created[gte]=... are objects in deepObject style.
            parameter.update(style="deepObject", explode=True)
        parameters.append(parameter)
    return parameters


# Field types sent in brackets in a form body (card[number]=..., expand[0]=...).
_NESTED_TYPES = (msgspec.inspect.StructType, msgspec.inspect.DictType, msgspec.inspect.ListType)


def _is_nested(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_is_nested(member) for member in info.types)
    if isinstance(info, msgspec.inspect.Metadata):
        return _is_nested(info.type)
    return isinstance(info, _NESTED_TYPES)


def form_encoding(body: Any) -> dict[str, Any]:
    """How each nested field of the Struct `body` is written in a form body:
    Stripe's bracket nesting, OpenAPI's deepObject style."""
    info = msgspec.inspect.type_info(body)
    assert isinstance(info, msgspec.inspect.StructType), body
    return {
        field.encode_name: {"style": "deepObject", "explode": True}
        for field in info.fields
        if _is_nested(field.type)
    }


def request_body(body: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The requestBody of an operation whose body is the Struct `body`
    (described by `schema`): form-encoded as Stripe's SDKs send it, or JSON."""
    required = any(field.required for field in msgspec.structs.fields(body))
    form: dict[str, Any] = {"schema": schema}
    encoding = form_encoding(body)
    if encoding:
        form["encoding"] = encoding
    return {
        "required": required,
        "description": "Form-encoded with bracket nesting (card[number]=...), as Stripe SDKs send it, or JSON.",
        "content": {"application/x-www-form-urlencoded": form, "application/json": {"schema": schema}},
    }


def document(app: Any, *, title: str = "payments", version: str = "1") -> dict[str, Any]:
    documented = []
    for rule in app.url_map.iter_rules():
        doc = getattr(app.view_functions[rule.endpoint], "__api__", None)
        if doc is not None:
            documented.append((rule, doc))
    types = {ErrorObject}
    for _, doc in documented:
        types.update(t for t in (doc.response, doc.body) if t is not None)
    _, components = msgspec.json.schema_components(sorted(types, key=repr), ref_template=REF_TEMPLATE)

    def ref(struct: Any) -> dict[str, Any]:
        (schema,), more = msgspec.json.schema_components([struct], ref_template=REF_TEMPLATE)
        components.update(more)
        return schema

    paths: dict[str, dict[str, Any]] = {}
    for rule, doc in sorted(documented, key=lambda item: item[0].rule):
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 255}}
            for name in re.findall(r"{([^{}]+)}", path)
        ]
        if doc.query is not None:
            parameters += _query_parameters(doc.query, components)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "operationId": f"{method.lower()}_{rule.endpoint}",
                "summary": doc.summary,
                "parameters": parameters,
                "security": [{"secret_key": []}, *([{"publishable_key": []}] if doc.publishable else [])],
                "responses": {
                    "200": {"description": "The object.", "content": {"application/json": {"schema": ref(doc.response)}}},
                    "default": {"description": "A Stripe-shaped error.", "content": {"application/json": {"schema": ref(ErrorObject)}}},
                },
            }
            if doc.body is not None:
                operation["requestBody"] = request_body(doc.body, ref(doc.body))
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": "A Stripe-compatible payment API."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "secret_key": {"type": "http", "scheme": "bearer", "description": "sk_test_... or sk_live_..."},
                "publishable_key": {"type": "http", "scheme": "bearer", "description": "pk_test_... or pk_live_..."},
            },
        },
    }
