"""What the ledger needs of a PrivateModel: its versions, their budgets, its mechanism."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from dpserve.api.privacybudget import TrainingSpend
from dpserve.api.privatemodel import PrivateModelSpec
from dpserve.ledger import events as ev
from dpserve.ledger.store import NotFound, Obj, Store, Unavailable
from dpserve.ledger.wire import LeaseFailure, first_error


@dataclass(frozen=True)
class ModelView:
    """What the ledger needs of a PrivateModel."""

    namespace: str
    name: str
    spec: PrivateModelSpec
    budget: str  # the budget the current version spends
    version: str  # the current version
    # Retired versions (status.versions) -> the budget each one spent; pods of a retired
    # version keep serving until the rollout replaces them, and keep spending that budget.
    retired: Mapping[str, str] = field(default_factory=dict)
    uid: str | None = None  # metadata.uid: the owner its Deployment must name

    @property
    def consumer(self) -> str:
        return f"{self.namespace}/{self.name}"

    def budget_of(self, version: str) -> str | None:
        """The budget ``version`` spends; None when the model lists no such version."""
        if version == self.version:
            return self.budget
        return self.retired.get(version)

    def declared_training(self, version: str) -> TrainingSpend | None:
        """The declared DP-SGD run of the artifact, when ``version`` is that artifact."""
        if self.spec.model.training is None or version != self.spec.model.version:
            return None
        return ev.training_spend(self.spec.model.training)


class ModelReader:
    """Reads PrivateModels, each view cached ``cache_s`` seconds (0: never cached)."""

    def __init__(self, store: Store, cache_s: float) -> None:
        self.store = store
        self.cache_s = cache_s
        self._models: dict[tuple[str, str], tuple[float, ModelView]] = {}
        self._specs: dict[tuple[str, int], PrivateModelSpec] = {}
        # Reads in flight: the pods of a model whose cached view expired (or a cold start,
        # every pod at once) share one read and one validation instead of each their own.
        self._reading: dict[tuple[str, str], asyncio.Task[ModelView]] = {}

    async def get(self, namespace: str, name: str, *, fresh: bool = False) -> ModelView:
        """The model's view (a 404 / 503 LeaseFailure when it cannot be read)."""
        key = (namespace, name)
        cached = self._models.get(key)
        if cached is not None and cached[0] > time.monotonic() and not fresh:
            return cached[1]
        task = self._reading.get(key)
        if task is None or fresh:  # a fresh read never joins one that started earlier
            task = asyncio.ensure_future(self._read(namespace, name))
            self._reading[key] = task
            task.add_done_callback(lambda done: self._reading.pop(key, None)
                                   if self._reading.get(key) is done else None)
        return await asyncio.shield(task)

    async def _read(self, namespace: str, name: str) -> ModelView:
        now = time.monotonic()
        try:
            raw = await self.store.get_model(namespace, name)
        except NotFound as exc:
            raise LeaseFailure(
                "NotFound", f"model: PrivateModel {namespace}/{name} not found"
            ) from exc
        except Unavailable as exc:
            raise LeaseFailure("Unavailable", f"cannot read the PrivateModel: {exc}") from exc
        view = self._view(namespace, name, raw)
        if self.cache_s > 0:
            self._models[(namespace, name)] = (now + self.cache_s, view)
        return view

    def _spec(self, namespace: str, name: str, raw: Obj) -> PrivateModelSpec:
        meta = raw.get("metadata", {})
        spec_key = (str(meta.get("uid")), int(meta.get("generation") or 0))
        spec = self._specs.get(spec_key)
        if spec is None:
            try:
                spec = PrivateModelSpec.model_validate(raw.get("spec") or {})
            except ValidationError as exc:
                raise LeaseFailure(
                    "NotFound",
                    f"model: PrivateModel {namespace}/{name} has an invalid spec: "
                    f"{first_error(exc)}",
                ) from exc
            if len(self._specs) > 4096:
                self._specs.clear()
            self._specs[spec_key] = spec
        return spec

    def _view(self, namespace: str, name: str, raw: Obj) -> ModelView:
        spec = self._spec(namespace, name, raw)
        status = raw.get("status") or {}
        retired: dict[str, str] = {}
        for record in status.get("versions") or []:
            # Records are appended as versions retire; a malformed one names no budget, so
            # its version is refused (fail closed) rather than charged to a guess.
            if isinstance(record, dict):
                version, budget = record.get("version"), record.get("budget")
                if isinstance(version, str) and isinstance(budget, str) and budget:
                    retired[version] = budget
        return ModelView(
            namespace=namespace,
            name=name,
            spec=spec,
            budget=str(status.get("budget") or spec.budget_ref.name),
            version=str(status.get("modelVersion") or spec.model.version),
            retired=retired,
            uid=(raw.get("metadata") or {}).get("uid"),
        )
