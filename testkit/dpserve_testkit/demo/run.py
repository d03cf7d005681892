"""``dpserve-demo``: the operator, its ledger and three private models, end to end on one machine.

1. Artifacts: scikit-learn's digits exported as a data set file; PATE teacher ensembles
   trained with ``dpserve-train --mode pate`` (offline, seconds) into the local PVC root;
   all-MiniLM-L6-v2 from its package made a huggingface artifact (in a child process: the
   control plane never imports torch or transformers).
2. The stack (:mod:`dpserve_testkit.demo.stack`): embedded API, operator process, local kubelet.
3. Budgets and PrivateModels applied (:mod:`dpserve_testkit.demo.scenario`); the operator renders
   Deployments, the kubelet runs their model server and filter sidecar processes.
4. Traffic through the sidecars until the ScaleToZero model is stopped, the Retrain model
   has answered from v2 (the Job trained it, the operator rolled it onto the next budget),
   and one tenant of the sentence encoder ran out of its partition while the other tenant
   kept being served.
5. The text story (:mod:`dpserve_testkit.demo.story`): two tiny GPT-2s fine-tuned on synthetic notes
   with a canary (ε = 900 and DP-LoRA at ε = 3), their exposure measured, both asked for the
   canary through their sidecars: the first answer is redacted, the second holds no secret.
6. A figure (ε against answers, accuracy against ε, canary exposure against ε) and a
   summary (also ``summary.json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from dpserve_testkit.demo import artifacts, manifests, story
from dpserve_testkit.demo.observe import ModelView, Snapshot, snapshot
from dpserve_testkit.demo.plot import Sample, write_plot
from dpserve_testkit.demo.scenario import (
    FULL,
    QUICK,
    TICKETS,
    EmbedderPlan,
    ModelPlan,
    NotesPlan,
    Scenario,
)
from dpserve_testkit.demo.stack import LocalStack
from dpserve_testkit.demo.traffic import Asker, EmbeddingClient, QueryClient, Tally

TICK_S = 0.2
# Class texts with contact details: the sidecar redacts them on the way out.
LABEL_PII = {3: "(reviewed by ann.lee@example.com)", 7: "(questions: (212) 555-0143)"}


class DemoFailed(RuntimeError):
    """The demo did not reach its end state (the message says where it stopped)."""


@dataclass(frozen=True)
class DemoOptions:
    work_dir: Path | None = None
    headless: bool = False
    quick: bool = False
    keep_running: bool = False
    timeout_s: float = 600.0
    queries_per_second: float = 8.0  # per PATE model: slow enough to watch ε move
    podman_image: str | None = None  # pods as podman containers of this image


@dataclass
class ModelSummary:
    name: str
    policy: str
    phase: str
    version: str
    answered: int
    correct: int
    accuracy: float | None
    redacted: int
    answered_by_version: dict[str, int]
    refused: dict[str, int]
    lifetime_epsilon: float
    budgets: list[dict[str, Any]]
    # A model on a budget with partitions: each tenant's partition and traffic.
    tenants: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DemoSummary:
    work_dir: str
    kubeconfig: str
    plot: str
    seconds: float
    stages: dict[str, float]
    models: dict[str, ModelSummary] = field(default_factory=dict)
    # The text story: each language model's ε, canary exposure and (redacted) answer.
    text: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class Console:
    """Headless: timestamped lines. Live: a rich console the view renders into."""

    def __init__(self, out: TextIO, headless: bool, started: float) -> None:
        self.out = out
        self.headless = headless
        self.started = started
        self.rich: Any = None
        if not headless:
            from rich.console import Console as RichConsole

            self.rich = RichConsole(file=out)

    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {message}"
        if self.rich is not None:
            self.rich.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)


@dataclass(frozen=True)
class Lane:
    """One client asking one request at a time, ``interval_s`` after each answer."""

    client: Asker
    interval_s: float


class Traffic:
    """One thread per lane (a PATE model, or one tenant of the sentence encoder)."""

    def __init__(self, lanes: dict[str, Lane]) -> None:
        self.lanes = lanes
        self.stopped = {name: threading.Event() for name in lanes}
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True,
                                          name=f"traffic-{name}") for name in lanes]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self, name: str) -> None:
        lane, stop = self.lanes[name], self.stopped[name]
        while not stop.is_set():
            answer = lane.client.ask()
            stop.wait(lane.interval_s if answer.answered else 0.3)

    def stop(self, *names: str) -> None:
        for key in names or list(self.stopped):
            self.stopped[key].set()

    def join(self) -> None:
        self.stop()
        for thread in self._threads:
            thread.join(timeout=30)

    @property
    def tallies(self) -> dict[str, Tally]:
        """Each lane's tally."""
        return {name: lane.client.tally for name, lane in self.lanes.items()}


def _lanes(scenario: Scenario, stack: LocalStack, options: DemoOptions) -> dict[str, Lane]:
    X, y = artifacts.load_queries(stack.pvc_root / "datasets" / "digits.npz")
    ns = scenario.namespace
    interval = 1.0 / options.queries_per_second if options.queries_per_second > 0 else 0.0
    lanes = {plan.name: Lane(QueryClient(_endpoints(stack, ns, plan.name), X, y,
                                         start=i * 400), interval)
             for i, plan in enumerate(scenario.models)}
    if (embedder := scenario.embedder) is not None:
        for i, tenant in enumerate(embedder.tenants):
            client = EmbeddingClient(
                _endpoints(stack, ns, embedder.name), TICKETS, model=embedder.name,
                header=embedder.header, tenant=tenant.name,
                per_request=tenant.texts_per_request, start=i * 5)
            lanes[embedder.lane(tenant.name)] = Lane(client, 1.0 / tenant.requests_per_second)
    return lanes


def _model_tallies(scenario: Scenario, tallies: dict[str, Tally]) -> dict[str, Tally]:
    """Each lane's tally, plus the sentence encoder's tenants added up under its name."""
    out = dict(tallies)
    if (embedder := scenario.embedder) is not None:
        out[embedder.name] = Tally.merged(tallies[embedder.lane(t.name)]
                                          for t in embedder.tenants)
    return out


def _prepare(scenario: Scenario, stack: LocalStack,
             log_dir: Path) -> tuple[dict[str, str], str, story.BuiltNotes | None]:
    """The data set and each model's v1 in the PVC root; returns their pvc:// URIs.

    Models with the same recipe (teacher count) share one training run: v1 of each is a copy.
    The sentence encoder's artifact and the text story's language models are built
    meanwhile, by child processes of their own.
    """
    encoder: Future[Path] | None = None
    texts: Future[story.BuiltNotes] | None = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        if scenario.notes is not None:
            texts = pool.submit(story.build, scenario.notes, stack.pvc_root, log_dir)
        if scenario.embedder is not None:
            encoder = pool.submit(
                artifacts.import_sentence_encoder, artifacts.minilm_source(),
                stack.pvc_root / "models" / scenario.embedder.name / "v1",
                log=log_dir / f"import-{scenario.embedder.name}-v1.log")
        uris, dataset = _prepare_pate(scenario, stack, log_dir)
        if encoder is not None:
            assert scenario.embedder is not None
            encoder.result()
            uris[scenario.embedder.name] = f"pvc://models/{scenario.embedder.name}/v1"
        built = texts.result() if texts is not None else None
    return uris, dataset, built


def _prepare_pate(scenario: Scenario, stack: LocalStack,
                  log_dir: Path) -> tuple[dict[str, str], str]:
    dataset = artifacts.export_digits(stack.pvc_root / "datasets" / "digits.npz")
    labels = artifacts.digit_labels(LABEL_PII)
    trained: dict[int, Path] = {}
    uris: dict[str, str] = {}
    for plan in scenario.models:
        output = stack.pvc_root / "models" / plan.name / "v1"
        if plan.teachers in trained:
            shutil.copytree(trained[plan.teachers], output)
        else:
            artifacts.train_pate_ensemble(
                dataset, output, teachers=plan.teachers, epochs=scenario.epochs,
                batch_size=scenario.batch_size, labels=labels,
                log=log_dir / f"train-{plan.name}-v1.log")
            trained[plan.teachers] = output
        uris[plan.name] = f"pvc://models/{plan.name}/v1"
    return uris, "pvc://datasets/digits.npz"


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    return found or "kubectl"


def _ran_out(embedder: EmbedderPlan, tallies: dict[str, Tally]) -> list[str]:
    """The tenants the sidecar refused with 429 BudgetExhausted (their partition is spent)."""
    return [t.name for t in embedder.tenants
            if tallies[embedder.lane(t.name)].refused.get("BudgetExhausted")]


@dataclass
class TenantWatch:
    """The sentence encoder's end state: a tenant ran out of its partition, and every other
    tenant was still answered (``served_after_exhaustion`` times) after that."""

    embedder: EmbedderPlan
    answered_then: dict[str, int] | None = None  # per tenant, when the first one ran out
    reported: set[str] = field(default_factory=set)

    def newly_ran_out(self, tallies: dict[str, Tally]) -> list[str]:
        fresh = [t for t in _ran_out(self.embedder, tallies) if t not in self.reported]
        self.reported.update(fresh)
        if fresh and self.answered_then is None:
            self.answered_then = {t.name: tallies[self.embedder.lane(t.name)].answered
                                  for t in self.embedder.tenants}
        return fresh

    def done(self, tallies: dict[str, Tally]) -> bool:
        if self.answered_then is None:
            return False
        out = set(_ran_out(self.embedder, tallies))
        return all(tallies[self.embedder.lane(t.name)].answered
                   >= self.answered_then[t.name] + self.embedder.served_after_exhaustion
                   for t in self.embedder.tenants if t.name not in out)


def _done(plan: ModelPlan, snap: Snapshot, tally: Tally, v2_answers: int) -> bool:
    view = snap.models.get(plan.name)
    if view is None:
        return False
    if plan.policy == "ScaleToZero":
        return view.phase == "BudgetExhausted" and snap.endpoints.get(plan.name, 0) == 0
    return tally.by_version.get("v2", 0) >= v2_answers


def _failed(view: ModelView) -> str | None:
    """Why the model can no longer reach its end state (None while it still can)."""
    if view.phase in ("Failed", "Blocked"):
        return f"phase {view.phase} ({view.reason})"
    if view.retraining == "RetrainFailed":
        return f"retraining gave up ({view.retraining_message})"
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C does (every child process is stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> DemoSummary:
    """Run the demo; raises :class:`DemoFailed` when it does not reach its end state."""
    scenario = QUICK if options.quick else FULL
    started = time.monotonic()
    console = Console(out, options.headless, started)
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="dpserve-demo-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    stack = LocalStack(work, podman_image=options.podman_image)
    traffic: Traffic | None = None
    with _sigterm_as_interrupt():
        try:
            console.say(f"work dir {work}")
            console.say("starting the embedded API, the operator and the local kubelet; "
                        "training the PATE teachers (dpserve-train --mode pate) meanwhile")
            if scenario.embedder is not None:
                console.say("building the all-MiniLM-L6-v2 artifact from its package "
                            "(python -m dpserve_runtime.hfartifact import) meanwhile")
            if (plan := scenario.notes) is not None:
                console.say(
                    f"text story: {plan.notes} synthetic clinical notes with a canary phone "
                    f"number inserted {plan.repeats} times; a tiny GPT-2 fine-tuned on them "
                    "twice (dpserve-train --format huggingface): "
                    + "; ".join(f"{m.name}: {m.label}" for m in plan.models))
            with ThreadPoolExecutor(max_workers=1) as pool:
                starting = pool.submit(stack.start)
                try:
                    uris, dataset, built = _prepare(scenario, stack, work / "logs")
                except story.StoryFailed as exc:
                    raise DemoFailed(f"text story: {exc}") from exc
                starting.result()
            stages["prepare"] = time.monotonic() - started
            if built is not None:
                for name, audit in built.audits.items():
                    console.say(
                        f"{name}: canary exposure {audit['exposure']:.1f} bits of "
                        f"{math.log2(audit['space']):.1f} (chance {audit['chanceExposure']:.1f}),"
                        " greedy decoding "
                        + ("reproduces" if audit["extracted"] else "does not reproduce")
                        + " the secret")
            hint = f"KUBECONFIG={stack.kubeconfig} {_kubectl()} get pm,pb -A"
            console.say(f"kubeconfig {stack.kubeconfig}; try: {hint}")
            ns = scenario.namespace
            stack.api.create("/api/v1/namespaces", manifests.namespace(ns))
            for body in scenario.manifests(uris, dataset):
                plural = "privacybudgets" if body["kind"] == "PrivacyBudget" else "privatemodels"
                stack.api.create(manifests.group_path(ns, plural), body)
                console.say(f"applied {body['kind']} {ns}/{body['metadata']['name']}")
            if built is not None:
                for body in scenario.notes_manifests(built.uris, built.training):
                    plural = ("privacybudgets" if body["kind"] == "PrivacyBudget"
                              else "privatemodels")
                    stack.api.create(manifests.group_path(ns, plural), body)
                    console.say(f"applied {body['kind']} {ns}/{body['metadata']['name']}")
            traffic = Traffic(_lanes(scenario, stack, options))
            traffic.start()
            traffic_started = time.monotonic()
            series = _watch(stack, scenario, traffic, console, options, hint, traffic_started)
            stages["traffic"] = time.monotonic() - traffic_started
            traffic.join()
            text: dict[str, dict[str, Any]] = {}
            if built is not None and (plan := scenario.notes) is not None:
                text = _text_story(plan, built, stack, ns, console, options, since=started)
            final = _settled(stack, scenario)
            limits = {p.name: [float(p.epsilon)] + ([float(p.next_epsilon)]
                                                   if p.next_epsilon else [])
                      for p in scenario.models}
            if (embedder := scenario.embedder) is not None:
                limits.update({embedder.lane(t.name): [float(embedder.partition_epsilon)]
                               for t in embedder.tenants})
            tenant_series = ([embedder.lane(t.name) for t in embedder.tenants]
                             if (embedder := scenario.embedder) is not None else [])
            plot = write_plot(series, limits, work / "dpserve-demo.png", tenant_series,
                              exposure={name: (r["epsilon"], r["exposure"], r["chanceExposure"],
                                               r["space"]) for name, r in text.items()})
            summary = _summary(scenario, final, traffic.tallies, work, stack, plot,
                               time.monotonic() - started, stages)
            summary.text = text
            (work / "summary.json").write_text(summary.to_json(), encoding="utf-8")
            _print_summary(summary, console, hint)
            if options.keep_running:
                console.say(f"still running (Ctrl-C to stop): {hint}")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
                console.say("stopping every process")
            return summary
        except KeyboardInterrupt:
            console.say("interrupted: stopping every process")
            raise
        finally:
            if traffic is not None:
                traffic.join()
            stack.stop()


def _text_story(plan: NotesPlan, built: story.BuiltNotes, stack: LocalStack, ns: str,
                console: Console, options: DemoOptions, since: float) -> dict[str, dict[str, Any]]:
    """Both language models asked for the canary through their sidecars (streamed)."""
    left = max(30.0, options.timeout_s - (time.monotonic() - since))
    try:
        results = story.ask(plan, built, lambda name: stack.endpoints(ns, name), left)
    except story.StoryFailed as exc:
        raise DemoFailed(f"text story: {exc}") from exc
    for name, r in results.items():
        console.say(f"{name} ({r['label']}) asked for the canary via its sidecar "
                    f"(POST /v1/completions, stream): {r['answer']!r}; "
                    + ("memorised, and the sidecar redacted it" if r["redacted"] and
                       r["memorised"] else "the secret is not in the answer"))
    return results


def _budget_names(plan: ModelPlan | EmbedderPlan) -> list[str]:
    if isinstance(plan, EmbedderPlan):
        return [plan.budget]
    return [plan.budget] + ([plan.next_budget] if plan.next_budget else [])


def _plans(scenario: Scenario) -> list[ModelPlan | EmbedderPlan]:
    return [*scenario.models, *([scenario.embedder] if scenario.embedder else [])]


def _budgets_spent(plan: ModelPlan | EmbedderPlan, snap: Snapshot) -> float:
    """ε spent by every budget of the model (the ledger's number, updated at each grant;
    the model's own lifetimeEpsilon follows at its next reconcile)."""
    return sum(snap.budgets[b].epsilon_spent for b in _budget_names(plan) if b in snap.budgets)


def _settled(stack: LocalStack, scenario: Scenario, timeout_s: float = 15.0) -> Snapshot:
    """The final state, once each model's lifetimeEpsilon caught up with its budgets."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = snapshot(stack.api, scenario.namespace, _endpoint_counts(stack, scenario))
        if time.monotonic() > deadline or all(
            (view := snap.models.get(p.name)) is not None
            and view.lifetime_epsilon >= _budgets_spent(p, snap) - 1e-9
            for p in _plans(scenario)
        ):
            return snap
        time.sleep(TICK_S)


def _endpoints(stack: LocalStack, ns: str, name: str) -> Callable[[], list[str]]:
    return lambda: stack.endpoints(ns, name)


def _endpoint_counts(stack: LocalStack, scenario: Scenario) -> dict[str, int]:
    return {name: len(stack.endpoints(scenario.namespace, name))
            for name in scenario.model_names}


def _watch(stack: LocalStack, scenario: Scenario, traffic: Traffic, console: Console,
           options: DemoOptions, hint: str, since: float) -> dict[str, list[Sample]]:
    """Observe until every model reached its end state; returns the plot's samples."""
    from dpserve_testkit.demo.view import render

    series: dict[str, list[Sample]] = {p.name: [] for p in scenario.models}
    embedder = scenario.embedder
    tenants = TenantWatch(embedder) if embedder is not None else None
    if embedder is not None:
        series.update({embedder.lane(t.name): [] for t in embedder.tenants})
    done: set[str] = set()
    seen: dict[str, tuple[str, str]] = {}
    live: Any = None
    if console.rich is not None:
        from rich.live import Live

        live = Live(console=console.rich, refresh_per_second=4, transient=False)
        live.start()
    try:
        while len(done) < len(scenario.model_names):
            elapsed = time.monotonic() - since
            if elapsed > options.timeout_s:
                raise DemoFailed(_explain(
                    stack, scenario, f"the demo did not finish within {options.timeout_s:.0f}s"))
            snap = snapshot(stack.api, scenario.namespace, _endpoint_counts(stack, scenario))
            tallies = _model_tallies(scenario, traffic.tallies)
            for plan in _plans(scenario):
                view = snap.models.get(plan.name)
                if view is None:
                    continue
                tally = tallies[plan.name]
                if isinstance(plan, ModelPlan):
                    series[plan.name].append(Sample(elapsed, tally.answered, tally.correct,
                                                    _budgets_spent(plan, snap), view.version))
                else:
                    _tenant_samples(plan, snap, tallies, series, elapsed, view.version)
                state = (view.phase, view.version)
                if seen.get(plan.name) != state:
                    seen[plan.name] = state
                    console.say(f"{plan.name}: phase {view.phase}, {view.version} on budget "
                                f"{view.budget}, ε {view.epsilon_spent:.3f} of "
                                f"{view.epsilon_limit or 0:g}, answered {tally.answered}")
                failure = _failed(view)
                if failure is not None:
                    raise DemoFailed(_explain(stack, scenario, f"{plan.name}: {failure}"))
                if isinstance(plan, EmbedderPlan):
                    assert tenants is not None
                    for tenant in tenants.newly_ran_out(tallies):
                        console.say(_ran_out_line(plan, tenant, snap, tallies))
                    finished = tenants.done(tallies)
                else:
                    finished = _done(plan, snap, tally, scenario.v2_answers)
                if plan.name not in done and finished:
                    done.add(plan.name)
                    if isinstance(plan, EmbedderPlan):
                        traffic.stop(*(plan.lane(t.name) for t in plan.tenants))
                        console.say(f"{plan.name}: done (a tenant ran out, the others are "
                                    "still served)")
                    else:
                        traffic.stop(plan.name)
                        console.say(f"{plan.name}: done ({plan.policy})")
            if live is not None:
                live.update(render(snap, tallies, title="dpserve-demo", hint=hint,
                                   elapsed_s=elapsed))
            time.sleep(TICK_S)
    finally:
        if live is not None:
            live.stop()
    return series


def _tenant_samples(plan: EmbedderPlan, snap: Snapshot, tallies: dict[str, Tally],
                    series: dict[str, list[Sample]], elapsed: float, version: str) -> None:
    budget = snap.budgets.get(plan.budget)
    for tenant in plan.tenants:
        lane = plan.lane(tenant.name)
        part = budget.partitions.get(tenant.name) if budget is not None else None
        series[lane].append(Sample(elapsed, tallies[lane].outputs, None,
                                   part.epsilon_spent if part is not None else 0.0, version))


def _ran_out_line(plan: EmbedderPlan, tenant: str, snap: Snapshot,
                  tallies: dict[str, Tally]) -> str:
    budget = snap.budgets.get(plan.budget)
    part = budget.partitions.get(tenant) if budget is not None else None
    spent = f"ε {part.epsilon_spent:.3f} of {part.epsilon_limit:g}" if part else "its ε"
    others = ", ".join(f"{t.name} answered {tallies[plan.lane(t.name)].outputs} texts"
                       for t in plan.tenants if t.name != tenant)
    return (f"{plan.name}: tenant {tenant} ran out ({spent} on its partition, "
            f"{tallies[plan.lane(tenant)].outputs} texts answered): 429 BudgetExhausted for "
            f"{tenant} only; {others} so far")


def _explain(stack: LocalStack, scenario: Scenario, headline: str) -> str:
    """``headline`` with the models' state, recent Events, the last trainer's message."""
    snap = snapshot(stack.api, scenario.namespace, _endpoint_counts(stack, scenario))
    states = "; ".join(f"{m.name}: phase {m.phase}, {m.version}, Ready {m.ready} ({m.reason}),"
                       f" retraining {m.retraining or '-'}" for m in snap.models.values())
    events = "; ".join(f"{e.object} {e.reason}: {e.message[:200]}" for e in snap.events[-4:])
    lines = [f"{headline}.", f"State: {states}.", f"Recent events: {events}."]
    pods = stack.workdir / "pods" / scenario.namespace
    messages = sorted(pods.glob("*/train.termination-log"), key=lambda p: p.stat().st_mtime)
    for path in reversed(messages):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            lines.append(f"Last trainer message ({path.parent.name}): {text[:600]}")
            break
    lines.append(f"Logs: {stack.workdir}/logs and {pods}")
    return "\n".join(lines)


def _summary(scenario: Scenario, snap: Snapshot, tallies: dict[str, Tally], work: Path,
             stack: LocalStack, plot: Path, seconds: float,
             stages: dict[str, float]) -> DemoSummary:
    summary = DemoSummary(work_dir=str(work), kubeconfig=str(stack.kubeconfig), plot=str(plot),
                          seconds=round(seconds, 1),
                          stages={k: round(v, 1) for k, v in stages.items()})
    tallies = _model_tallies(scenario, tallies)
    for plan in _plans(scenario):
        view = snap.models[plan.name]
        tally = tallies[plan.name]
        budgets = [
            {"name": b.name, "epsilonSpent": b.epsilon_spent, "epsilonLimit": b.epsilon_limit,
             "queriesGranted": b.granted, "exhausted": b.exhausted}
            for name in _budget_names(plan) if (b := snap.budgets.get(name)) is not None
        ]
        summary.models[plan.name] = ModelSummary(
            name=plan.name, policy=plan.policy, phase=view.phase, version=view.version,
            answered=tally.answered, correct=tally.correct,
            accuracy=round(tally.accuracy, 4) if tally.accuracy is not None else None,
            redacted=tally.redacted, answered_by_version=dict(tally.by_version),
            refused=dict(tally.refused), lifetime_epsilon=view.lifetime_epsilon,
            budgets=budgets,
            tenants=_tenant_summary(plan, snap, tallies) if isinstance(plan, EmbedderPlan)
            else [],
        )
    return summary


def _tenant_summary(plan: EmbedderPlan, snap: Snapshot,
                    tallies: dict[str, Tally]) -> list[dict[str, Any]]:
    budget = snap.budgets.get(plan.budget)
    out = []
    for tenant in plan.tenants:
        tally = tallies[plan.lane(tenant.name)]
        part = budget.partitions.get(tenant.name) if budget is not None else None
        out.append({
            "tenant": tenant.name, "header": plan.header,
            "epsilonSpent": part.epsilon_spent if part is not None else 0.0,
            "epsilonLimit": float(plan.partition_epsilon),
            "queriesGranted": part.granted if part is not None else 0,
            "requestsAnswered": tally.answered, "textsAnswered": tally.outputs,
            "refused": dict(tally.refused),
            "ranOut": bool(tally.refused.get("BudgetExhausted")),
        })
    return out


def _print_summary(summary: DemoSummary, console: Console, hint: str) -> None:
    console.say(f"done in {summary.seconds:.0f}s (stages: "
                + ", ".join(f"{k} {v:.0f}s" for k, v in summary.stages.items()) + ")")
    for model in summary.models.values():
        accuracy = f"{model.accuracy:.1%}" if model.accuracy is not None else "-"
        console.say(
            f"{model.name} ({model.policy}): phase {model.phase}, {model.version}; answered "
            f"{model.answered} {model.answered_by_version}, accuracy {accuracy}, "
            f"{model.redacted} with PII redacted; refused {model.refused}; lifetime ε "
            f"{model.lifetime_epsilon:.4f}")
        for budget in model.budgets:
            console.say(f"  budget {budget['name']}: ε {budget['epsilonSpent']:.4f} of "
                        f"{budget['epsilonLimit']:g}, {budget['queriesGranted']} queries granted"
                        f"{', exhausted' if budget['exhausted'] else ''}"
                        f"{' (the dataset ledger)' if model.tenants else ''}")
        for tenant in model.tenants:
            console.say(
                f"  tenant {tenant['tenant']} ({tenant['header']}): ε "
                f"{tenant['epsilonSpent']:.4f} of {tenant['epsilonLimit']:g} on its partition, "
                f"{tenant['queriesGranted']} texts granted; answered {tenant['textsAnswered']} "
                f"texts in {tenant['requestsAnswered']} requests; refused {tenant['refused']}"
                + ("; ran out: 429 for this tenant only" if tenant["ranOut"] else ""))
    for name, r in summary.text.items():
        console.say(
            f"{name} ({r['label']}): trained to ε {r['epsilon']:.3g}; canary exposure "
            f"{r['exposure']:.1f} bits (rank {r['rank']} of {r['space']}, chance "
            f"{r['chanceExposure']:.1f}); answer {r['answer']!r}"
            f"{', redacted' if r['redacted'] else ''}; secret reached the client: "
            f"{'yes' if r['secretReachedClient'] else 'no'}")
    console.say(f"plot: {summary.plot}")
    console.say(f"summary: {Path(summary.work_dir) / 'summary.json'}")
