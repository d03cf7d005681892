"""``dpserve demo``: the operator, its ledger and two private models, end to end on one machine.

1. Artifacts: scikit-learn's digits exported as a data set file; PATE teacher ensembles
   trained with ``dpserve-train --mode pate`` (offline, seconds) into the local PVC root.
2. The stack (:mod:`dpserve.demo.stack`): embedded API, operator process, local kubelet.
3. Budgets and PrivateModels applied (:mod:`dpserve.demo.scenario`); the operator renders
   Deployments, the kubelet runs their model server and filter sidecar processes.
4. Traffic through the sidecars until the ScaleToZero model is stopped and the Retrain model
   has answered from v2 (the Job trained it, the operator rolled it onto the next budget).
5. A figure (ε against answers, accuracy against ε) and a summary (also ``summary.json``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from dpserve.demo import artifacts, manifests
from dpserve.demo.observe import ModelView, Snapshot, snapshot
from dpserve.demo.plot import Sample, write_plot
from dpserve.demo.scenario import FULL, QUICK, ModelPlan, Scenario
from dpserve.demo.stack import LocalStack
from dpserve.demo.traffic import QueryClient, Tally

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
    queries_per_second: float = 8.0  # per model: slow enough to watch ε move
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


@dataclass
class DemoSummary:
    work_dir: str
    kubeconfig: str
    plot: str
    seconds: float
    stages: dict[str, float]
    models: dict[str, ModelSummary] = field(default_factory=dict)

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


class Traffic:
    """One thread per model, each asking one query at a time at a bounded rate."""

    def __init__(self, clients: dict[str, QueryClient], qps: float) -> None:
        self.clients = clients
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.stopped = {name: threading.Event() for name in clients}
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True,
                                          name=f"traffic-{name}") for name in clients]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self, name: str) -> None:
        client, stop = self.clients[name], self.stopped[name]
        while not stop.is_set():
            answer = client.ask()
            stop.wait(self.interval if answer.answered else 0.3)

    def stop(self, name: str | None = None) -> None:
        for key in [name] if name else list(self.stopped):
            self.stopped[key].set()

    def join(self) -> None:
        self.stop()
        for thread in self._threads:
            thread.join(timeout=30)

    @property
    def tallies(self) -> dict[str, Tally]:
        return {name: client.tally for name, client in self.clients.items()}


def _prepare(scenario: Scenario, stack: LocalStack, log_dir: Path) -> tuple[dict[str, str], str]:
    """The data set and each model's v1 in the PVC root; returns their pvc:// URIs.

    Models with the same recipe (teacher count) share one training run: v1 of each is a copy.
    """
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
            with ThreadPoolExecutor(max_workers=1) as pool:
                starting = pool.submit(stack.start)
                uris, dataset = _prepare(scenario, stack, work / "logs")
                starting.result()
            stages["prepare"] = time.monotonic() - started
            hint = f"KUBECONFIG={stack.kubeconfig} {_kubectl()} get pm,pb -A"
            console.say(f"kubeconfig {stack.kubeconfig}; try: {hint}")
            ns = scenario.namespace
            stack.api.create("/api/v1/namespaces", manifests.namespace(ns))
            for body in scenario.manifests(uris, dataset):
                plural = "privacybudgets" if body["kind"] == "PrivacyBudget" else "privatemodels"
                stack.api.create(manifests.group_path(ns, plural), body)
                console.say(f"applied {body['kind']} {ns}/{body['metadata']['name']}")
            X, y = artifacts.load_queries(stack.pvc_root / "datasets" / "digits.npz")
            clients = {
                plan.name: QueryClient(_endpoints(stack, ns, plan.name), X, y, start=i * 400)
                for i, plan in enumerate(scenario.models)
            }
            traffic = Traffic(clients, options.queries_per_second)
            traffic.start()
            traffic_started = time.monotonic()
            series = _watch(stack, scenario, traffic, console, options, hint, traffic_started)
            stages["traffic"] = time.monotonic() - traffic_started
            traffic.join()
            final = _settled(stack, scenario)
            limits = {p.name: [float(p.epsilon)] + ([float(p.next_epsilon)]
                                                   if p.next_epsilon else [])
                      for p in scenario.models}
            plot = write_plot(series, limits, work / "dpserve-demo.png")
            summary = _summary(scenario, final, traffic.tallies, work, stack, plot,
                               time.monotonic() - started, stages)
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


def _budget_names(plan: ModelPlan) -> list[str]:
    return [plan.budget] + ([plan.next_budget] if plan.next_budget else [])


def _budgets_spent(plan: ModelPlan, snap: Snapshot) -> float:
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
            for p in scenario.models
        ):
            return snap
        time.sleep(TICK_S)


def _endpoints(stack: LocalStack, ns: str, name: str) -> Callable[[], list[str]]:
    return lambda: stack.endpoints(ns, name)


def _endpoint_counts(stack: LocalStack, scenario: Scenario) -> dict[str, int]:
    return {p.name: len(stack.endpoints(scenario.namespace, p.name)) for p in scenario.models}


def _watch(stack: LocalStack, scenario: Scenario, traffic: Traffic, console: Console,
           options: DemoOptions, hint: str, since: float) -> dict[str, list[Sample]]:
    """Observe until every model reached its end state; returns the plot's samples."""
    from dpserve.demo.view import render

    series: dict[str, list[Sample]] = {p.name: [] for p in scenario.models}
    done: set[str] = set()
    seen: dict[str, tuple[str, str]] = {}
    live: Any = None
    if console.rich is not None:
        from rich.live import Live

        live = Live(console=console.rich, refresh_per_second=4, transient=False)
        live.start()
    try:
        while len(done) < len(scenario.models):
            elapsed = time.monotonic() - since
            if elapsed > options.timeout_s:
                raise DemoFailed(_explain(
                    stack, scenario, f"the demo did not finish within {options.timeout_s:.0f}s"))
            snap = snapshot(stack.api, scenario.namespace, _endpoint_counts(stack, scenario))
            tallies = traffic.tallies
            for plan in scenario.models:
                view = snap.models.get(plan.name)
                if view is None:
                    continue
                tally = tallies[plan.name]
                series[plan.name].append(Sample(elapsed, tally.answered, tally.correct,
                                                _budgets_spent(plan, snap), view.version))
                state = (view.phase, view.version)
                if seen.get(plan.name) != state:
                    seen[plan.name] = state
                    console.say(f"{plan.name}: phase {view.phase}, {view.version} on budget "
                                f"{view.budget}, ε {view.epsilon_spent:.3f} of "
                                f"{view.epsilon_limit or 0:g}, answered {tally.answered}")
                failure = _failed(view)
                if failure is not None:
                    raise DemoFailed(_explain(stack, scenario, f"{plan.name}: {failure}"))
                if plan.name not in done and _done(plan, snap, tally, scenario.v2_answers):
                    done.add(plan.name)
                    traffic.stop(plan.name)
                    console.say(f"{plan.name}: done ({plan.policy})")
            if live is not None:
                live.update(render(snap, tallies, title="dpserve demo", hint=hint,
                                   elapsed_s=elapsed))
            time.sleep(TICK_S)
    finally:
        if live is not None:
            live.stop()
    return series


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
    for plan in scenario.models:
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
        )
    return summary


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
                        f"{', exhausted' if budget['exhausted'] else ''}")
    console.say(f"plot: {summary.plot}")
    console.say(f"summary: {Path(summary.work_dir) / 'summary.json'}")
