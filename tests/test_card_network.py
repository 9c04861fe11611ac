import trio

from simulators.card_network import AuthorizationRequest, CardNetwork, NetworkAnswer, Operation


def _today():
    return (2026, 5)


def _request(reference="att_1", card_number="4242424242424242", amount_minor=1999, **overrides):
    fields = dict(
        reference=reference,
        card_number=card_number,
        exp_month=12,
        exp_year=2034,
        amount_minor=amount_minor,
        currency="usd",
        capture=True,
    )
    fields.update(overrides)
    return AuthorizationRequest(**fields)


async def test_approves_a_good_card():
    network = CardNetwork(today=_today)
    answer = await network.authorize(_request())
    assert answer == NetworkAnswer("att_1", True, None, None, "visa")
    assert network.operations() == [
        Operation(
            reference="att_1",
            network="visa",
            last4="4242",
            amount_minor=1999,
            currency="usd",
            capture=True,
            approved=True,
            code=None,
            decline_code=None,
            sequence=0,
        )
    ]
    assert network.lookup("att_1") == network.operations()[0]
    assert network.lookup("att_unknown") is None
    assert network.calls_total() == 1


async def test_declines_each_test_card():
    cases = [
        ("4000000000000002", "card_declined", "generic_decline"),
        ("4000000000009995", "card_declined", "insufficient_funds"),
        ("4000000000000069", "expired_card", "expired_card"),
        ("4000000000000127", "incorrect_cvc", "incorrect_cvc"),
        ("4000000000000119", "processing_error", "processing_error"),
        ("4242424242424241", "incorrect_number", "incorrect_number"),
    ]
    network = CardNetwork(today=_today)
    for index, (number, code, decline_code) in enumerate(cases):
        answer = await network.authorize(_request(f"att_{index}", number))
        assert answer == NetworkAnswer(f"att_{index}", False, code, decline_code, "visa")
    assert [operation.sequence for operation in network.operations()] == list(range(len(cases)))
    assert [operation.approved for operation in network.operations()] == [False] * len(cases)


async def test_expired_card_is_declined_against_injected_today():
    network = CardNetwork(today=lambda: (2035, 1))
    answer = await network.authorize(_request(exp_year=2034, exp_month=12))
    assert (answer.approved, answer.code, answer.decline_code) == (
        False,
        "expired_card",
        "expired_card",
    )


async def test_repeated_reference_returns_first_answer_and_records_once():
    network = CardNetwork(today=_today)
    first = await network.authorize(_request(amount_minor=1999))
    # Same reference, different amount and a card that would be declined:
    # the network must neither charge again nor change its answer.
    second = await network.authorize(_request(amount_minor=5000, card_number="4000000000000002"))
    assert second == first
    assert second.approved
    assert len(network.operations()) == 1
    assert network.lookup("att_1").amount_minor == 1999
    assert network.calls_total() == 2


async def test_concurrent_calls_with_one_reference_charge_once():
    network = CardNetwork(today=_today)
    answers = []

    async def call(amount_minor, card_number):
        request = _request(amount_minor=amount_minor, card_number=card_number)
        answers.append(await network.authorize(request))

    # Alternate an approved and a declined card: if each call decided on its
    # own, the answers would disagree.
    async with trio.open_nursery() as nursery:
        for index in range(20):
            card_number = "4242424242424242" if index % 2 == 0 else "4000000000000002"
            nursery.start_soon(call, 100 + index, card_number)

    assert len(answers) == 20
    assert all(answer == answers[0] for answer in answers)
    assert len(network.operations()) == 1
    operation = network.lookup("att_1")
    assert operation.sequence == 0
    assert (operation.approved, operation.code) == (answers[0].approved, answers[0].code)
    assert network.calls_total() == 20


async def test_cancelled_caller_is_still_charged_once():
    network = CardNetwork(latency_ms=(5, 5), today=_today)
    with trio.move_on_after(0.001):
        await network.authorize(_request())
    assert len(network.operations()) == 1
    retry = await network.authorize(_request(amount_minor=1))
    assert retry.approved
    assert len(network.operations()) == 1


async def _latencies(seed, count=8):
    network = CardNetwork(seed=seed, latency_ms=(1, 5), today=_today)
    latencies = []
    for index in range(count):
        started = trio.current_time()
        await network.authorize(_request(f"att_{index}"))
        latencies.append(round(trio.current_time() - started, 6))
    return latencies


async def test_seeded_latency_is_reproducible(autojump_clock):
    first = await _latencies(seed=7)
    again = await _latencies(seed=7)
    other = await _latencies(seed=8)
    assert first == again
    assert first != other
    assert all(0.001 <= latency <= 0.005 for latency in first + other)
    assert len(set(first)) > 1  # actually drawn, not a constant
