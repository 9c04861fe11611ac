"""Generated documents stay in step with the code they are made from."""

from pathlib import Path

from engine import diagram, intent

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagram_matches_the_tables() -> None:
    written = (ROOT / "docs" / "state-machine.md").read_text()
    assert written == diagram.document(), "run: python -m engine.diagram > docs/state-machine.md"


def test_state_diagram_draws_every_allowed_move() -> None:
    text = diagram.document()
    for status, moves in intent.TRANSITIONS.items():
        for command, target in moves.items():
            assert f"    {status} --> {target}: {command.__name__}" in text


def test_status_reachability_follows_the_table() -> None:
    from tests.conftest import status_reachable

    assert status_reachable("processing", "requires_payment_method")  # declined after an unknown outcome
    assert status_reachable("processing", "requires_capture")
    assert status_reachable("requires_confirmation", "succeeded")
    assert not status_reachable("succeeded", "processing")
    assert not status_reachable("canceled", "succeeded")
