"""A PATE model serves through its sidecar until the budget is spent, then is scaled to zero.

One model drains once (the fixture); the tests look at different sides of that run: the
answers, the stopped model, the ledger, and the output filter (the artifact's class texts
carry an e-mail address or a phone number, which must never reach a client raw).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from e2e_support import DELTA, E2E, PATE_TEACHERS, PII_LABELS, granted_queries, wait_until

from dpserve.accounting import max_additional
from dpserve.accounting.events import GNMaxQuery
from dpserve_testkit.demo import manifests
from dpserve_testkit.demo.traffic import NO_ENDPOINT, Answer

SIGMA = 20
LIMIT = 3.0
# Refusals once the budget is gone: the sidecar's 429 while it still runs, then no endpoint.
REFUSED = {"BudgetExhausted", "NoEndpoints"}
RAW_PII = ("ann.lee@example.com", "555-0143", "(212)")


@dataclass(frozen=True)
class Drain:
    ns: str
    capacity: int  # queries the accountant fits into the budget
    answers: list[Answer]
    model: dict[str, Any]  # the PrivateModel once BudgetExhausted
    later: Answer  # a query sent after the model was stopped


@pytest.fixture(scope="module")
def drain(e2e: E2E) -> Drain:
    ns = e2e.namespace("drain")
    artifact = e2e.install(e2e.trained.pate, "models", f"{ns}/digits/v1")
    e2e.apply(
        manifests.budget("digits", ns, epsilon=str(LIMIT), delta=DELTA),
        manifests.pate_model("digits", ns, budget="digits", artifact=artifact,
                             teachers=PATE_TEACHERS, noise_multiplier=str(SIGMA),
                             entities=["EMAIL_ADDRESS", "PHONE_NUMBER"]),
    )
    e2e.wait_serving(ns, "digits")
    capacity = max_additional([], GNMaxQuery(SIGMA), LIMIT, float(DELTA), "rdp", 100_000)
    client = e2e.client(ns, "digits")
    answers = []
    for _ in range(capacity + 50):
        answer = client.ask()
        answers.append(answer)
        if not answer.answered:
            break
    model = wait_until(lambda: (m := e2e.pm(ns, "digits"))["status"]["phase"] ==
                       "BudgetExhausted" and m, what="phase BudgetExhausted")
    wait_until(lambda: not e2e.stack.endpoints(ns, "digits"), what="no endpoints")
    return Drain(ns, capacity, answers, model, client.ask())


@pytest.mark.slow
def test_answers_stop_exactly_when_the_budget_is_spent(drain: Drain) -> None:
    answered = [a for a in drain.answers if a.answered]
    refusal = drain.answers[-1]
    assert not refusal.answered, "the budget never ran out"
    assert refusal.reason in REFUSED, refusal
    if refusal.status == 429:  # the sidecar's own refusal: JSON with the ledger's numbers
        assert refusal.body is not None and refusal.body["epsilonSpent"] <= LIMIT
    assert 1 <= len(answered) <= drain.capacity
    assert all(a.version == "v1" and a.label is not None for a in answered)


@pytest.mark.slow
def test_exhausted_model_is_scaled_to_zero_and_refuses(e2e: E2E, drain: Drain) -> None:
    deployment = e2e.deployment(drain.ns, "digits")
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    status = drain.model["status"]
    assert status["replicas"] == 0
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["BudgetAvailable"]["status"] == "False"
    assert conditions["Ready"]["status"] == "False"
    assert drain.later.status == NO_ENDPOINT and not drain.later.answered
    wait_until(lambda: "BudgetExhausted" in {e["reason"] for e in e2e.events(drain.ns, "digits")},
               what="BudgetExhausted Event")
    # Stopped, not deleted: the model and its history stay.
    assert e2e.pm(drain.ns, "digits")["status"]["epsilonSpent"] == status["epsilonSpent"]


@pytest.mark.slow
def test_ledger_paid_for_every_answer_and_stayed_within_epsilon(e2e: E2E, drain: Drain) -> None:
    status, recomputed = e2e.ledger(drain.ns, "digits")
    granted = granted_queries(status)
    answered = sum(1 for a in drain.answers if a.answered)
    assert answered <= granted <= drain.capacity
    # Nothing crashed, so only the leases cut short by the scale-down can hold unused units.
    assert granted - answered <= max(2, drain.capacity // 20)
    assert Decimal(status.epsilon_spent or "0") <= Decimal(str(LIMIT))
    assert recomputed <= LIMIT
    assert float(status.epsilon_spent or 0) >= recomputed - 1e-9  # rounded up, never down
    assert any(c.type == "Exhausted" and c.status == "True" for c in status.conditions)


@pytest.mark.slow
def test_pii_in_model_outputs_is_redacted_by_the_sidecar(drain: Drain) -> None:
    # The artifact's labels hold the raw values: the model server answers with them.
    assert all(any(raw in text for raw in RAW_PII) for text in PII_LABELS)
    answered = [a for a in drain.answers if a.answered]
    tags: set[str] = set()
    for answer in answered:
        document = json.dumps(answer.body)
        assert not any(raw in document for raw in RAW_PII), document
        assert answer.body is not None
        text = answer.body["outputs"][0]["text"]
        assert text.startswith("digit ")
        tags |= {tag for tag in ("<EMAIL_ADDRESS>", "<PHONE_NUMBER>") if tag in text}
    assert tags == {"<EMAIL_ADDRESS>", "<PHONE_NUMBER>"}
