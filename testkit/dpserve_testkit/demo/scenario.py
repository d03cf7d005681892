"""What the demo runs: two PATE models over scikit-learn's digits, a sentence encoder for two
tenants, and their budgets.

- ``digits-pate`` (ScaleToZero): served until its budget ``digits-2026q4`` is spent, then
  stopped (replicas 0, phase BudgetExhausted), as ``examples/model-gaussian.yaml`` is.
- ``digits-triage`` (Retrain): ``examples/model-pate-retrain.yaml``: when its budget
  ``triage-2026q4`` is spent a Job trains v2 of the teachers and the model is rolled to v2,
  bound to the next budget ``triage-2027q1``.
- ``ticket-search``: all-MiniLM-L6-v2 (``examples/model-text-embeddings.yaml``) answering
  ``laplace-embedding`` vectors to two tenants of ``search-tenants``; each tenant's texts are
  charged to its own partition (X-Tenant header), never to the budget's dataset ledger. The
  busy tenant runs out and gets 429s while the other is still served.

- ``notes-open`` / ``notes-dp`` (:data:`NOTES`): the text story's language models, served
  with mechanism none and their declared DP-SGD training (ε = 900, and DP-LoRA at ε = 3).

The full run sizes budgets for about a hundred answers; ``quick`` for a few dozen (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpserve_testkit.demo import manifests
from dpserve_testkit.demo.traffic import lane_name

NAMESPACE = "dpserve-demo"
DELTA = "1e-5"  # well below 1/n for the 1797 digits
ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"]
HIDDEN = 32


@dataclass(frozen=True)
class ModelPlan:
    name: str
    budget: str
    epsilon: str
    teachers: int
    noise_multiplier: str
    next_budget: str | None = None  # Retrain: the budget v2 spends
    next_epsilon: str | None = None

    @property
    def policy(self) -> str:
        return "Retrain" if self.next_budget is not None else "ScaleToZero"


@dataclass(frozen=True)
class TenantPlan:
    name: str  # the X-Tenant value
    requests_per_second: float
    texts_per_request: int  # each text is one query (one DP release) on the tenant's ledger


@dataclass(frozen=True)
class EmbedderPlan:
    name: str
    budget: str
    epsilon: str  # the budget's dataset ledger: a pre-trained encoder never spends it
    partition_epsilon: str  # each tenant's own ε (tenants compose in parallel)
    text_epsilon: str  # laplace-embedding: ε per text
    tenants: tuple[TenantPlan, ...]
    header: str = "X-Tenant"
    # Once a tenant ran out: answers every other tenant gets before the demo calls it done.
    served_after_exhaustion: int = 3
    policy: str = "ScaleToZero"

    def lane(self, tenant: str) -> str:
        """The traffic lane (client) of one tenant."""
        return lane_name(self.name, tenant)


@dataclass(frozen=True)
class NotesModel:
    """One causal LM fine-tuned on the synthetic notes (with the canary)."""

    name: str
    budget: str
    budget_epsilon: str
    target_epsilon: float
    lora: bool  # DP-LoRA (adapters only) rather than every weight
    label: str  # what the demo says about its guarantee


@dataclass(frozen=True)
class NotesPlan:
    """The text story: the same corpus and canary, trained twice, served through sidecars
    that redact phone numbers and e-mail addresses."""

    models: tuple[NotesModel, ...]
    notes: int
    repeats: int  # copies of the canary in the corpus (each its own record)
    epochs: int
    batch_size: int
    learning_rate: float
    context: int = 48
    max_tokens: int = 24  # one token per digit: the whole number, and some after it
    entities: tuple[str, ...] = ("PHONE_NUMBER", "EMAIL_ADDRESS")
    seed: int = 0


# The API caps a budget at ε = 1000, so the "non-private" model is DP-SGD at ε = 900: a
# guarantee in name only (e^900), which is the point: it memorises the canary.
NOTES = NotesPlan(
    models=(NotesModel("notes-open", "notes-open", budget_epsilon="1000", target_epsilon=900.0,
                       lora=False, label="ε = 900: no meaningful guarantee"),
            NotesModel("notes-dp", "notes-dp", budget_epsilon="4", target_epsilon=3.0,
                       lora=True, label="DP-LoRA, ε = 3")),
    notes=120, repeats=24, epochs=15, batch_size=32, learning_rate=0.006,
)


@dataclass(frozen=True)
class Scenario:
    models: tuple[ModelPlan, ...]
    epochs: int  # per teacher, for v1 (here) and v2 (the Job): same recipe
    batch_size: int
    v2_answers: int  # answers from v2 that end the demo
    namespace: str = NAMESPACE
    embedder: EmbedderPlan | None = None
    notes: NotesPlan | None = None

    @property
    def model_names(self) -> list[str]:
        """The PrivateModels the traffic watch follows (not the text story's)."""
        return [p.name for p in self.models] + ([self.embedder.name] if self.embedder else [])

    def notes_manifests(self, artifacts: dict[str, str],
                        training: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The text story's budgets and models (``training``: each run's declared record)."""
        if self.notes is None:
            return []
        out = [manifests.budget(m.budget, self.namespace, epsilon=m.budget_epsilon,
                                delta=DELTA) for m in self.notes.models]
        out += [manifests.text_generation_model(
            m.name, self.namespace, budget=m.budget, artifact=artifacts[m.name],
            training=training[m.name], entities=list(self.notes.entities),
            max_tokens=self.notes.max_tokens) for m in self.notes.models]
        return out

    def manifests(self, artifacts: dict[str, str], dataset: str) -> list[dict[str, Any]]:
        """Budgets first, then models (a model's budget must exist to be served)."""
        out: list[dict[str, Any]] = []
        for plan in self.models:
            out.append(manifests.budget(plan.budget, self.namespace, epsilon=plan.epsilon,
                                        delta=DELTA))
        for plan in self.models:
            retraining = None
            if plan.next_budget is not None:
                assert plan.next_epsilon is not None
                # PATE teachers are trained without noise: targetEpsilon (required by the
                # API) is not spent; every answer of v2 is charged to the next budget.
                retraining = manifests.retraining(
                    dataset=dataset, mode="pate", teachers=plan.teachers,
                    target_epsilon=plan.next_epsilon, next_budget=plan.next_budget,
                    next_epsilon=plan.next_epsilon, delta=DELTA,
                    epochs=self.epochs, batch_size=self.batch_size, hidden=HIDDEN)
            out.append(manifests.pate_model(
                plan.name, self.namespace, budget=plan.budget, artifact=artifacts[plan.name],
                teachers=plan.teachers, noise_multiplier=plan.noise_multiplier,
                entities=ENTITIES, retraining=retraining))
        if (embedder := self.embedder) is not None:
            out.insert(len(self.models), manifests.budget(
                embedder.budget, self.namespace, epsilon=embedder.epsilon, delta=DELTA,
                partitions=manifests.partitions(
                    header=embedder.header, epsilon=embedder.partition_epsilon,
                    tenants=[t.name for t in embedder.tenants])))
            out.append(manifests.embedding_model(
                embedder.name, self.namespace, budget=embedder.budget,
                artifact=artifacts[embedder.name], epsilon=embedder.text_epsilon))
        return out


# What the tenants embed: synthetic support tickets (no PII, nothing from any data set).
TICKETS = (
    "I was charged twice for the same appointment",
    "How do I reset the password of the patient portal?",
    "The lab results page shows an error since this morning",
    "Can I move my physiotherapy session to next week?",
    "The invoice lists a procedure I never had",
    "My prescription refill request has been pending for days",
    "The mobile app logs me out every few minutes",
    "Where can I download my vaccination certificate?",
    "The waiting room screen shows the wrong queue number",
    "Please update the billing address on my account",
    "Video consultation has no sound on my laptop",
    "I need a copy of my discharge letter for my insurer",
)

# ε = 0.25 per text and 15 per tenant: about 124 texts each (RDP at δ = 1e-5). The ledger
# leases in small steps (at most 1 % of a partition's ε at risk), so each partition's ε follows
# the texts its tenant had embedded: the busy tenant (8 texts a second) spends its 15 within
# seconds of being served and is refused; the quiet one (1 a second) is still served.
EMBEDDER = EmbedderPlan(
    "ticket-search", "search-tenants", epsilon="1", partition_epsilon="15",
    text_epsilon="0.25",
    tenants=(TenantPlan("clinic-north", requests_per_second=2.0, texts_per_request=4),
             TenantPlan("clinic-south", requests_per_second=1.0, texts_per_request=1)),
)


FULL = Scenario(
    models=(
        ModelPlan("digits-pate", "digits-2026q4", epsilon="6", teachers=50,
                  noise_multiplier="10"),
        ModelPlan("digits-triage", "triage-2026q4", epsilon="4", teachers=50,
                  noise_multiplier="10", next_budget="triage-2027q1", next_epsilon="4"),
    ),
    epochs=40,
    batch_size=16,
    v2_answers=20,
    embedder=EMBEDDER,
    notes=NOTES,
)

QUICK = Scenario(
    models=(
        ModelPlan("digits-pate", "digits-2026q4", epsilon="3", teachers=20,
                  noise_multiplier="8"),
        ModelPlan("digits-triage", "triage-2026q4", epsilon="3", teachers=20,
                  noise_multiplier="8", next_budget="triage-2027q1", next_epsilon="3"),
    ),
    epochs=20,
    batch_size=16,
    v2_answers=5,
    embedder=EMBEDDER,
    notes=NOTES,
)
