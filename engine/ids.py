"""Object ids: prefixed, unguessable, time-ordered, and carrying their partition.

Layout of the 144 bits behind the prefix, most significant first:

    48 bits  milliseconds since the Unix epoch   (orders ids by creation time)
    16 bits  partition number                     (routes an id to its owner)
    80 bits  random                               (makes ids unguessable)

They are written in Crockford's base32 with a fixed width of 29 characters, so
the text of two ids sorts the same way as their creation times. The core has
no clock and no randomness of its own: callers pass both in.
"""

from __future__ import annotations

PREFIXES = frozenset({"pi", "pm", "att", "ch", "evt", "re", "acct", "we", "seti", "setatt", "cus"})

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# Crockford's digits to the digits Python's int(text, 32) reads.
_TO_BASE32 = str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")

TIME_BITS = 48
PARTITION_BITS = 16
RANDOM_BITS = 80
RANDOM_BYTES = RANDOM_BITS // 8
BODY_CHARS = 29  # ceil(144 / 5)
PARTITIONS_MAX = 1 << PARTITION_BITS


# Two characters for every 10-bit value: an id is written ten bits at a
# time (a 4-bit head and 14 pairs), twice as fast as five bits at a time.
_PAIRS = tuple(first + second for first in ALPHABET for second in ALPHABET)
# The 64 bits of time and partition make the first 13 characters (a 4-bit
# head and six pairs), the 80 random bits the last 16 (eight pairs). Ids are
# made many at a time in the same millisecond on the same partition, so the
# first part of the last one made is kept.
_last_head: tuple[int, str] = (-1, "")


def _head(time_and_partition: int) -> str:
    value, pairs = time_and_partition, _PAIRS
    return (
        ALPHABET[value >> 60] + pairs[(value >> 50) & 1023] + pairs[(value >> 40) & 1023] + pairs[(value >> 30) & 1023]
        + pairs[(value >> 20) & 1023] + pairs[(value >> 10) & 1023] + pairs[value & 1023]
    )


def make_id(prefix: str, partition: int, now_ms: int, random_bytes: bytes) -> str:
    """Build an id. `random_bytes` must be 10 fresh bytes from a CSPRNG."""
    global _last_head
    assert prefix in PREFIXES, prefix
    assert 0 <= partition < PARTITIONS_MAX, partition
    assert 0 <= now_ms < (1 << TIME_BITS), now_ms
    assert len(random_bytes) == RANDOM_BYTES
    time_and_partition = (now_ms << PARTITION_BITS) | partition
    made, head = _last_head
    if made != time_and_partition:
        head = _head(time_and_partition)
        _last_head = (time_and_partition, head)
    value, pairs = int.from_bytes(random_bytes, "big"), _PAIRS
    return (
        prefix + "_" + head + pairs[value >> 70] + pairs[(value >> 60) & 1023] + pairs[(value >> 50) & 1023]
        + pairs[(value >> 40) & 1023] + pairs[(value >> 30) & 1023] + pairs[(value >> 20) & 1023]
        + pairs[(value >> 10) & 1023] + pairs[value & 1023]
    )


def parse_id(text: str, prefix: str) -> tuple[int, int] | None:
    """Return (created_ms, partition) of a well-formed id with this prefix, else None.

    Never raises: ids come from clients, and a malformed one is just "not found".
    """
    head, separator, body = text.partition("_")
    # Every character in the alphabet (nothing is left once they are
    # stripped), then read in C: Crockford's digits become Python's base-32
    # digits, which `int` reads.
    if separator != "_" or head != prefix or len(body) != BODY_CHARS or body.strip(ALPHABET):
        return None
    value = int(body.translate(_TO_BASE32), 32)
    if value >> (TIME_BITS + PARTITION_BITS + RANDOM_BITS):
        return None
    partition = (value >> RANDOM_BITS) & (PARTITIONS_MAX - 1)
    return value >> (PARTITION_BITS + RANDOM_BITS), partition


def partition_of(text: str, prefix: str) -> int | None:
    parsed = parse_id(text, prefix)
    return None if parsed is None else parsed[1]


# The ids the engine gives the network as operation references.
REFERENCE_PREFIXES = ("att", "re")


def partition_of_reference(reference: str) -> int | None:
    """The partition of an attempt or refund id (a network operation's
    reference); None for anything else."""
    prefix = reference.partition("_")[0]
    return partition_of(reference, prefix) if prefix in REFERENCE_PREFIXES else None


# A charge is an authorization or charge attempt as Stripe shows it: its id
# is the attempt's with Stripe's prefix, so it names the same partition and
# time, and a charge id leads to its attempt (and so to its intent) without
# a lookup. Nothing stores charge ids: rows written before charges had ids
# of their own, which name attempts, read as charges unchanged.
CHARGE_PREFIX = "ch"
ATTEMPT_PREFIX = "att"


def charge_id(attempt_id: str) -> str:
    """The id a charge is shown under: its attempt's body behind `ch_`."""
    return CHARGE_PREFIX + "_" + attempt_id.partition("_")[2]


def attempt_id_of_charge(text: str) -> str | None:
    """The attempt behind a charge id (`ch_...`, or the `att_...` id that
    answers gave before charges had ids of their own); None for anything
    else, including a malformed id."""
    head, _, body = text.partition("_")
    if head not in (CHARGE_PREFIX, ATTEMPT_PREFIX) or parse_id(text, head) is None:
        return None
    return ATTEMPT_PREFIX + "_" + body
