"""Stripe's search query language, parsed and matched. Pure: no I/O.

A query is up to CLAUSES_MAX clauses, each `field operator value`, joined
by a space or `AND`, or all by `OR` (the keywords in any case; Stripe
forbids mixing the two and has no parentheses):

    status:"succeeded" AND amount>=1000
    metadata["order_id"]:"6735" OR metadata["order_id"]:"6736"
    -currency:"usd" created>1700000000

- `:` is an exact match. On a string field (status, currency, customer,
  payment_intent) it ignores case; on metadata it does not.
- `>`, `<`, `>=`, `<=` compare numbers (amount, created in unix seconds);
  `=` is accepted there as `:`.
- A leading `-` negates a clause.
- String values are quoted, with double or single quotes (a backslash
  escapes the quote and itself inside); a number may be quoted or not; the bare
  word `null` matches a field that is empty (a metadata key not set, no
  customer), `true` and `false` a boolean field.
- Stripe's substring operator `~` exists only for fields these resources
  do not have, so it is refused here, as any other operator a field does
  not take.

`parse` refuses what it cannot read with a `QueryError` whose message names
the problem; the gateway answers it as Stripe's 400 on `query`. `matches`
tells whether an object, read through a lookup function, satisfies a query.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping

import msgspec

# Stripe's bound is 5,000; the gateway's is lower (gateway/params.py).
QUERY_CHARS_MAX = 5000
CLAUSES_MAX = 10
# Stripe's metadata keys are at most 40 characters; a longer one never matches.
METADATA_KEY_CHARS_MAX = 40
# The digits an integer value may have (amounts have at most 8, times 10).
NUMBER_DIGITS_MAX = 15


class FieldType(enum.StrEnum):
    string = "string"  # exact match, case-insensitive
    numeric = "numeric"  # exact match and comparisons
    metadata = "metadata"  # metadata["key"], exact match
    boolean = "boolean"  # true or false


# The fields Stripe documents for each searchable resource that these
# objects have ("Query fields for PaymentIntents", "... for charges").
PAYMENT_INTENT_FIELDS: Mapping[str, FieldType] = {
    "amount": FieldType.numeric,
    "created": FieldType.numeric,
    "currency": FieldType.string,
    "customer": FieldType.string,
    "metadata": FieldType.metadata,
    "status": FieldType.string,
}

CHARGE_FIELDS: Mapping[str, FieldType] = {
    "amount": FieldType.numeric,
    "created": FieldType.numeric,
    "currency": FieldType.string,
    "customer": FieldType.string,
    "disputed": FieldType.boolean,
    "metadata": FieldType.metadata,
    "payment_intent": FieldType.string,
    "refunded": FieldType.boolean,
    "status": FieldType.string,
}

COMPARISONS = (">=", "<=", ">", "<")
# Stripe reads either quote: its own examples write status:'succeeded'.
QUOTES = "\"'"


class QueryError(ValueError):
    """A query that cannot be read; the message says why, for the caller."""


class Clause(msgspec.Struct, frozen=True):
    field: str
    operator: str  # ":" or one of COMPARISONS
    # A string, an integer (numeric fields), a bool (boolean fields), or None for `null`.
    value: str | int | bool | None
    key: str | None = None  # the metadata key
    negated: bool = False


class Query(msgspec.Struct, frozen=True):
    clauses: tuple[Clause, ...]
    any_of: bool = False  # joined by OR (else AND)


# What a lookup gives for a field (and a metadata key): a string, an
# integer, a bool, or None when the object has no value there.
Lookup = Callable[[str, str | None], str | int | bool | None]

_FIELD = re.compile(r"[a-z_][a-z0-9_.]*")
_OPERATOR = re.compile(r">=|<=|>|<|=|:|~")
_BARE = re.compile(r"[^\s\"']+")
_INTEGER = re.compile(r"-?[0-9]+")
_SPACE = re.compile(r"\s+")
_JOINER = re.compile(r"(?:and|or)(?=\s|$)", re.IGNORECASE)
_FORMAT_HINT = 'Use the form field:"value", metadata["key"]:"value" or amount>1000.'


class _Reader:
    """A cursor over the query text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def done(self) -> bool:
        return self.at >= len(self.text)

    def peek(self, length: int = 1) -> str:
        return self.text[self.at : self.at + length]

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.at)
        if found is None:
            return None
        self.at = found.end()
        return found.group(0)

    def quoted(self) -> str:
        """A string quoted with double or single quotes at the cursor, unescaped."""
        quote = self.peek()
        assert quote in QUOTES
        self.at += 1
        parts: list[str] = []
        while not self.done():
            character = self.text[self.at]
            if character == "\\" and self.at + 1 < len(self.text) and self.text[self.at + 1] in quote + "\\":
                parts.append(self.text[self.at + 1])
                self.at += 2
            elif character == quote:
                self.at += 1
                return "".join(parts)
            else:
                parts.append(character)
                self.at += 1
        raise QueryError("The search query has a quoted value with no closing quote.")

    def where(self) -> str:
        return f"at character {self.at + 1}"


def parse(text: str, fields: Mapping[str, FieldType], resource: str) -> Query:
    """The query `text` over `fields` (of `resource`, as named in messages);
    raises QueryError naming what is wrong."""
    if len(text) > QUERY_CHARS_MAX:
        raise QueryError(f"The search query is longer than {QUERY_CHARS_MAX} characters.")
    reader = _Reader(text)
    reader.match(_SPACE)
    if reader.done():
        raise QueryError("The search query is empty. " + _FORMAT_HINT)
    clauses: list[Clause] = []
    joiners: set[str] = set()
    while True:
        clauses.append(_clause(reader, fields, resource))
        if len(clauses) > CLAUSES_MAX:
            raise QueryError(f"A search query may have at most {CLAUSES_MAX} clauses.")
        space = reader.match(_SPACE)
        if reader.done():
            break
        if space is None:
            raise QueryError(f"Separate the clauses of a search query with a space, AND or OR ({reader.where()}).")
        joiner = "AND"
        keyword = reader.match(_JOINER)
        if keyword is not None:
            joiner = keyword.upper()
            if reader.match(_SPACE) is None or reader.done():
                raise QueryError(f"{joiner} must be followed by a space and another clause ({reader.where()}).")
        joiners.add(joiner)
        if len(joiners) > 1:
            raise QueryError("A search query cannot combine AND and OR: use one of them throughout (a space counts as AND).")
    return Query(clauses=tuple(clauses), any_of=joiners == {"OR"})


def _clause(reader: _Reader, fields: Mapping[str, FieldType], resource: str) -> Clause:
    negated = reader.peek() == "-"
    if negated:
        reader.at += 1
    start = reader.where()
    field = reader.match(_FIELD)
    if field is None:
        raise QueryError(f"A search clause must start with a field name ({start}). {_FORMAT_HINT}")
    kind = fields.get(field)
    if kind is None:
        names = ", ".join(sorted(fields))
        raise QueryError(f"Field `{field[:100]}` is not a search field of {resource}. The fields are: {names}.")
    key = None
    if kind is FieldType.metadata:
        opening = reader.peek(2)
        if len(opening) != 2 or opening[0] != "[" or opening[1] not in QUOTES:
            raise QueryError(f'Name the metadata key as metadata["key"] ({reader.where()}).')
        reader.at += 1
        key = reader.quoted()
        if reader.peek() != "]":
            raise QueryError(f'Close the metadata key with "]" ({reader.where()}).')
        reader.at += 1
        if not key:
            raise QueryError("A metadata key in a search query cannot be empty.")
    operator = reader.match(_OPERATOR)
    if operator is None:
        raise QueryError(f"Expected an operator (:, >, <, >= or <=) after `{field}` ({reader.where()}). {_FORMAT_HINT}")
    if operator == "~":
        raise QueryError(f"Field `{field}` does not support substring matching (~); use : for an exact match.")
    if operator == "=":
        if kind is not FieldType.numeric:
            raise QueryError(f"Use : to match field `{field}`; = is for numbers only.")
        operator = ":"
    if operator != ":" and kind is not FieldType.numeric:
        raise QueryError(f"Field `{field}` cannot be compared with {operator}: it takes : only.")
    value = _value(reader, field, kind, operator)
    return Clause(field=field, operator=operator, value=value, key=key, negated=negated)


def _value(reader: _Reader, field: str, kind: FieldType, operator: str) -> str | int | bool | None:
    if reader.done() or reader.peek().isspace():
        raise QueryError(f"Field `{field}` has no value after {operator} ({reader.where()}).")
    quoted = reader.peek() in QUOTES
    raw = reader.quoted() if quoted else reader.match(_BARE)
    assert raw is not None
    if not quoted and raw == "null":
        if kind is FieldType.numeric or kind is FieldType.boolean or (field not in ("customer", "metadata")):
            raise QueryError(f"Field `{field}` is never empty, so it cannot be matched with null.")
        if operator != ":":
            raise QueryError(f"null can only be matched with : (field `{field}`).")
        return None
    if kind is FieldType.numeric:
        if _INTEGER.fullmatch(raw) is None or len(raw.lstrip("-")) > NUMBER_DIGITS_MAX:
            raise QueryError(f"Field `{field}` takes a whole number, such as {field}>1000.")
        return int(raw)
    if kind is FieldType.boolean:
        if raw not in ("true", "false"):
            raise QueryError(f'Field `{field}` takes true or false, such as {field}:"true".')
        return raw == "true"
    if not quoted:
        raise QueryError(f'Quote the value of field `{field}`, such as {field}:"{raw[:40]}".')
    return raw


def _clause_holds(clause: Clause, lookup: Lookup) -> bool:
    actual = lookup(clause.field, clause.key)
    wanted = clause.value
    if wanted is None:
        return actual is None or actual == ""
    if actual is None:
        return False
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return actual == wanted
    if isinstance(wanted, int):
        if not isinstance(actual, int):
            return False
        if clause.operator == ":":
            return actual == wanted
        return {">": actual > wanted, "<": actual < wanted, ">=": actual >= wanted, "<=": actual <= wanted}[clause.operator]
    if clause.key is not None:
        return actual == wanted
    return str(actual).casefold() == wanted.casefold()


def matches(query: Query, lookup: Lookup) -> bool:
    """Whether the object `lookup` reads satisfies `query`."""
    results = (_clause_holds(clause, lookup) != clause.negated for clause in query.clauses)
    return any(results) if query.any_of else all(results)
