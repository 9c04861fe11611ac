"""Request bodies: form-encoded with bracket nesting (what Stripe SDKs send) or JSON.

`card[number]=4242&metadata[order]=7&expand[]=x` becomes
`{"card": {"number": "4242"}, "metadata": {"order": "7"}, "expand": ["x"]}`.
Form values stay strings; typed conversion happens later against a schema.
A parameter given twice is refused in either encoding, never last-one-wins.
Every bound is checked here so a hostile body costs little.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from gateway.errors import redact

FIELDS_MAX = 256
DEPTH_MAX = 4
KEY_CHARS_MAX = 200
ARRAY_ITEMS_MAX = 100

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class BodyError(Exception):
    """The body cannot be read. `param` names the offending parameter if known."""

    def __init__(self, message: str, param: str | None = None, code: str = "parameter_invalid") -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.param = None if param is None else redact(param)
        self.code = code


def decode_json(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or `{}` for a blank body.

    Raises BodyError with code `body_invalid` if the body is not one JSON
    object or nests deeper than DEPTH_MAX, and with code `parameter_invalid`
    naming the parameter in bracket notation (`metadata[order]`) if an object
    at any depth gives the same key twice: last-key-wins would let a second
    `amount` override the one a reviewer or a proxy read.
    """
    if not body.strip():
        return {}
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: a few KB of brackets nest deeper than the decoder's
        # stack; it is hostile input like any other malformed body.
        raise BodyError("Invalid JSON body: the request body could not be parsed.", code="body_invalid") from None
    if not isinstance(value, dict):
        raise BodyError("Invalid JSON body: expected an object at the top level.", code="body_invalid")
    keys = _check_depth(value, 1)
    # Each key in the text is followed by a colon outside any string, and a
    # repeated key leaves fewer keys decoded than written. So a body with no
    # more colons than decoded keys cannot repeat one, and the slower second
    # parse below is only paid by bodies with colons inside strings (URLs)
    # or with a repeated key.
    if body.count(b":") > keys:
        _refuse_duplicate_keys(body)
    return value


def _check_depth(value: Any, depth: int) -> int:
    """The number of object keys in `value`, at every depth.

    Containers count as levels, leaves do not: `{"a": {"b": 1}}` is 2 deep,
    like the form name `a[b]`. Raises BodyError past DEPTH_MAX."""
    if not isinstance(value, dict | list):
        return 0
    if depth > DEPTH_MAX:
        raise BodyError("The request body is nested too deeply.", code="body_invalid")
    if isinstance(value, dict):
        return len(value) + sum(_check_depth(child, depth + 1) for child in value.values())
    return sum(_check_depth(child, depth + 1) for child in value)


def _refuse_duplicate_keys(body: bytes) -> None:
    """Raise BodyError naming the first key given twice in one object.

    msgspec keeps the last of repeated keys without saying so; the stdlib
    parser hands each object over as its list of pairs, repeats included.
    The body has already been parsed by msgspec and its depth bounded, so
    this parse cannot recurse deeply; numbers stay text because only keys
    matter here (and a long integer cannot hit int()'s digit limit).
    """
    try:
        tree = json.loads(
            body.decode("utf-8"), object_pairs_hook=tuple, parse_int=str, parse_float=str, parse_constant=str
        )
    except (ValueError, RecursionError):
        # Only reachable if the two parsers disagree on a body msgspec took;
        # refuse it as unreadable rather than let it through unchecked.
        raise BodyError("Invalid JSON body: the request body could not be parsed.", code="body_invalid") from None
    name = _first_duplicate_key(tree, "")
    if name is not None:
        name = name[:KEY_CHARS_MAX]
        raise BodyError(f"The parameter {name!r} is given more than once.", param=name)


def _first_duplicate_key(value: Any, path: str) -> str | None:
    """The bracket name (`metadata[order]`, `items[0][price]`) of the first
    repeated key in a tree whose objects are tuples of pairs, or None."""
    if isinstance(value, tuple):
        seen: set[str] = set()
        for key, child in value:
            name = f"{path}[{key}]" if path else key
            if key in seen:
                return name
            seen.add(key)
            found = _first_duplicate_key(child, name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found = _first_duplicate_key(child, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def decode_form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError("The request body is not valid UTF-8.", code="body_invalid") from error
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=FIELDS_MAX, errors="strict")
    except UnicodeDecodeError:
        raise BodyError("The request body is not valid UTF-8 once percent-decoded.", code="body_invalid") from None
    except ValueError:
        raise BodyError(f"Too many parameters: at most {FIELDS_MAX} are allowed.", code="body_invalid") from None
    result: dict[str, Any] = {}
    for key, value in pairs:
        _insert(result, key, value)
    return result


def _insert(result: dict[str, Any], key: str, value: str) -> None:
    match = _KEY.match(key) if len(key) <= KEY_CHARS_MAX else None
    if match is None:
        raise BodyError(f"Invalid parameter name: {key[:KEY_CHARS_MAX]!r}.", param=key[:KEY_CHARS_MAX])
    path = [match.group(1), *_PART.findall(match.group(2))]
    if len(path) > DEPTH_MAX:
        raise BodyError("The parameter is nested too deeply.", param=key)
    node: Any = result
    for index, part in enumerate(path):
        if not isinstance(node, dict | list):
            raise BodyError(f"The parameter {key!r} mixes a value and a nested object.", param=path[0])
        last = index == len(path) - 1
        following = None if last else path[index + 1]
        child_default: Any = value if last else ([] if following == "" or (following or "").isdigit() else {})
        if isinstance(node, list):
            if part != "" and not part.isdigit():
                raise BodyError(f"Invalid array index in {key!r}.", param=path[0])
            position = len(node) if part == "" else int(part)
            if position > len(node) or position >= ARRAY_ITEMS_MAX:
                raise BodyError(f"Invalid array index in {key!r}.", param=path[0])
            if position == len(node):
                node.append(child_default)
            elif last and isinstance(node[position], str):
                raise BodyError(f"The parameter {key!r} is given more than once.", param=path[0])
            elif last or not isinstance(node[position], dict | list):
                raise BodyError(f"The parameter {key!r} mixes a value and a nested object.", param=path[0])
            elif type(node[position]) is not type(child_default):
                raise BodyError(f"Invalid array index in {key!r}.", param=path[0])
            node = node[position]
        else:
            if part == "":
                raise BodyError(f"Invalid parameter name: {key!r}.", param=path[0])
            if last:
                if part in node:
                    raise BodyError(f"The parameter {key!r} is given more than once.", param=key)
                node[part] = value
            else:
                existing = node.setdefault(part, child_default)
                if not isinstance(existing, dict | list) or type(existing) is not type(child_default):
                    raise BodyError(f"The parameter {key!r} mixes a value and a nested object.", param=path[0])
                node = existing
