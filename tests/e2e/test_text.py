"""Text models end to end: the operator serves huggingface PrivateModels through the sidecar,
and clients speak the protocols they already use.

- a generator (a tiny GPT-2 that memorised a support reply carrying an e-mail address and a
  phone number: non-private on purpose) streams a chat completion to the official ``openai``
  client; the PII is redacted inside the stream, no chunk ever carries it, and the
  non-streamed answer is the same text;
- all-MiniLM-L6-v2 serves ``laplace-embedding`` vectors to two tenants: each tenant's
  queries are charged to its own partition, never to the dataset's ledger;
- today's PATE model answers Open Inference Protocol v2 ``infer`` requests, charged as GNMax
  queries.

Runs on both kubelet runtimes (processes, and podman containers of the built image).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import openai
import pytest
from e2e_support import DELTA, E2E, PATE_TEACHERS, granted_queries, wait_until

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve_testkit.demo import manifests
from text_support import build_memorising_lm, minilm_artifact

PROMPT = "How do I reach the clinic?"
SECRET = " Write to ann.lee@example.com or call (212) 555-0143."
RAW_PII = ("ann.lee@example.com", "ann.lee", "555-0143")
TENANTS = ("north", "south")
# Declared for the ledger: what a DP fine-tuning run of this generator would have spent.
TRAINING = {"noiseMultiplier": "1.0", "sampleRate": "0.01", "steps": 200,
            "sampling": "poisson"}


def _model(name: str, ns: str, budget: str, artifact: str, task: str,
           mechanism: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "budgetRef": {"name": budget},
        "model": {"artifact": artifact, "format": "huggingface", "task": task,
                  **extra.pop("model", {})},
        "serving": {"replicas": 1, "mechanism": mechanism,
                    "resources": {"cpu": "1", "memory": "2Gi"}, **extra.pop("serving", {})},
        "confidential": {"profile": "none", "required": False},
        **extra,
    }
    return {"apiVersion": manifests.API_VERSION, "kind": "PrivateModel",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.fixture(scope="module")
def text_ns(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One namespace with the three models applied together (their pods start in parallel)."""
    ns = e2e.namespace("text")
    work = tmp_path_factory.mktemp("text-artifacts")
    lm = build_memorising_lm(work / "lm", f"User: {PROMPT}\nAssistant:", SECRET)
    lm_uri = e2e.install(lm, "models", f"{ns}/writer/v1")
    minilm_uri = e2e.install(minilm_artifact(work / "minilm"), "models", f"{ns}/embedder/v1")
    pate_uri = e2e.install(e2e.trained.pate, "models", f"{ns}/digits/v1")
    notes = manifests.budget("notes", ns, epsilon="8", delta=DELTA)
    tenants = manifests.budget("tenants", ns, epsilon="1", delta=DELTA)
    tenants["spec"]["partitions"] = {"header": "X-Tenant", "epsilon": "20",
                                     "tenants": list(TENANTS)}
    digits = manifests.budget("digits", ns, epsilon="20", delta=DELTA)
    e2e.apply(
        notes, tenants, digits,
        _model("writer", ns, "notes", lm_uri, "text-generation", {"type": "none"},
               model={"training": TRAINING},
               serving={"generation": {"maxTokens": 48, "maxChoices": 1}},
               outputFilter={"action": "redact",
                             # Pattern entities only: their hold-back is short, so the
                             # answer streams in several chunks (PERSON holds up to ~240
                             # characters: docs/pii.md).
                             "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"],
                             "verbatimGuard": {"enabled": False}}),
        _model("embedder", ns, "tenants", minilm_uri, "feature-extraction",
               {"type": "laplace-embedding", "epsilon": "0.5"},
               outputFilter={"verbatimGuard": {"enabled": False}}),
        manifests.pate_model("digits", ns, budget="digits", artifact=pate_uri,
                             teachers=PATE_TEACHERS, noise_multiplier="20"),
    )
    for model in ("writer", "embedder", "digits"):
        e2e.wait_serving(ns, model, timeout_s=240)
    return ns


def _client(e2e: E2E, ns: str, model: str) -> openai.OpenAI:
    (endpoint,) = e2e.stack.endpoints(ns, model)
    return openai.OpenAI(base_url=f"{endpoint}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def test_chat_stream_is_redacted_in_every_chunk(e2e: E2E, text_ns: str) -> None:
    client = _client(e2e, text_ns, "writer")
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    stream = client.chat.completions.create(model="writer", messages=messages, stream=True,
                                            temperature=0, max_tokens=40)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    streamed = "".join(chunks)
    assert "<EMAIL_ADDRESS>" in streamed and "<PHONE_NUMBER>" in streamed, streamed
    for raw in RAW_PII:
        assert raw not in streamed
        assert not any(raw in chunk for chunk in chunks)
    assert len([c for c in chunks if c]) > 1, "the answer was not streamed"

    whole = client.chat.completions.create(model="writer", messages=messages,
                                           temperature=0, max_tokens=40)
    assert whole.choices[0].message.content == streamed

    # Served with mechanism none: only the declared training run is on the notes ledger.
    status = PrivacyBudgetStatus.model_validate(e2e.pb(text_ns, "notes")["status"])
    assert [e.kind for e in status.ledger] == ["training"]


def test_embeddings_are_charged_to_the_asking_tenant(e2e: E2E, text_ns: str) -> None:
    client = _client(e2e, text_ns, "embedder")
    texts = ["chest pain after exercise", "refund for a double charge", "night shift note"]
    answer = client.embeddings.create(model="embedder", input=texts,
                                      extra_headers={"X-Tenant": "north"})
    assert [len(d.embedding) for d in answer.data] == [384] * 3

    def spent() -> dict[str, float]:
        status = PrivacyBudgetStatus.model_validate(e2e.pb(text_ns, "tenants")["status"])
        return {p.tenant: float(p.epsilon_spent) for p in status.partitions}

    by_tenant = wait_until(lambda: (s := spent()).get("north", 0.0) > 0 and s,
                           what="north's partition charged")
    assert by_tenant.get("south", 0.0) == 0.0
    status = PrivacyBudgetStatus.model_validate(e2e.pb(text_ns, "tenants")["status"])
    # Leases debit before they grant: every query entry names the tenant, none the dataset.
    queries = [e for e in status.ledger if e.kind == "query"]
    assert queries and all(e.partition == "north" for e in queries)
    assert float(status.epsilon_spent or 0) == 0.0

    with pytest.raises(openai.BadRequestError):  # no tenant: refused, nothing charged
        client.embeddings.create(model="embedder", input=texts)


def test_v2_infer_on_the_pate_model(e2e: E2E, text_ns: str) -> None:
    (endpoint,) = e2e.stack.endpoints(text_ns, "digits")
    rows = e2e.trained.X[:3]
    body = {"id": "r1", "inputs": [{"name": "input", "datatype": "FP32",
                                    "shape": list(rows.shape),
                                    "data": rows.reshape(-1).tolist()}]}
    request = urllib.request.Request(f"{endpoint}/v2/models/digits/infer",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["id"] == "r1" and answer["model_name"] == "digits"
    assert answer["outputs"] and answer["outputs"][0]["shape"][0] == 3
    with urllib.request.urlopen(f"{endpoint}/v2/models/digits", timeout=30) as response:
        assert json.loads(response.read())["name"] == "digits"
    status = PrivacyBudgetStatus.model_validate(e2e.pb(text_ns, "digits")["status"])
    assert granted_queries(status) >= 3
