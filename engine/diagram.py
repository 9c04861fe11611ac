"""The state diagrams in docs/state-machine.md, generated from the tables.

Run `python -m engine.diagram > docs/state-machine.md` after changing a
table; a test fails while the document and the tables disagree.
"""

from __future__ import annotations

from engine import intent as machine

SPECIAL_CASES = {
    (machine.Status.processing, machine.RecordApproval): "an approved authorization goes to requires_capture",
    (machine.Status.requires_action, machine.RecordApproval): "an approved authorization goes to requires_capture",
    (machine.Status.processing, machine.RecordDecline): "a declined capture goes back to requires_capture",
}


def _mermaid(rows: list[tuple[str, str, str]], start: str) -> list[str]:
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {start}"]
    lines += [f"    {before} --> {after}: {label}" for before, after, label in rows]
    lines.append("```")
    return lines


def document() -> str:
    intent_rows = []
    for status, moves in machine.TRANSITIONS.items():
        for command, target in moves.items():
            label = command.__name__
            special = SPECIAL_CASES.get((status, command))
            if special is not None:
                label += f" ({special})"
            intent_rows.append((str(status), str(target), label))
    refund_rows = [
        (str(status), str(target), command.__name__)
        for status, moves in machine.REFUND_TRANSITIONS.items()
        for command, target in moves.items()
    ]
    dispute_rows = [
        (str(status), str(target), command.__name__)
        for status, moves in machine.DISPUTE_TRANSITIONS.items()
        for command, targets in moves.items()
        for target in targets
    ]
    lines = [
        "# State machines",
        "",
        "Generated from the tables in `engine/status.py`, `engine/refunds.py` and `engine/disputes.py` by `python -m engine.diagram`;",
        "do not edit by hand. Any (status, command) pair not drawn is refused and",
        "changes nothing.",
        "",
        "## PaymentIntent",
        "",
        "An intent is created in `requires_payment_method`, or in",
        "`requires_confirmation` when it is given a payment method (CreateIntent",
        "with `confirm` is a create followed by a ConfirmIntent).",
        "",
        *_mermaid(intent_rows, "requires_payment_method"),
        "",
        "## Refund",
        "",
        *_mermaid(refund_rows, "pending"),
        "",
        "## Dispute",
        "",
        *_mermaid(dispute_rows, "needs_response"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(document(), end="")
