"""The live terminal view of the demo (rich): models, budgets, tenants, traffic, Events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dpserve_testkit.demo.observe import Snapshot
from dpserve_testkit.demo.traffic import Tally, lane_name

if TYPE_CHECKING:
    from rich.console import RenderableType

SHORT = {"BudgetExhausted": "429", "NoEndpoints": "no-pod", "LedgerUnavailable": "503"}
PHASE_STYLE = {"Serving": "green", "BudgetExhausted": "red", "Retraining": "yellow",
               "Progressing": "cyan", "Pending": "cyan", "Failed": "bold red",
               "Blocked": "bold red"}


def render(snap: Snapshot, tallies: Mapping[str, Tally], *, title: str, hint: str,
           elapsed_s: float) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    models = Table(title="PrivateModels", title_justify="left", box=box.SIMPLE_HEAVY,
                   caption_justify="left")
    for column in ("model", "phase", "pods", "ver", "ε spent/limit", "", "lifetime ε",
                   "answered", "acc"):
        models.add_column(column, no_wrap=True)
    refusals: list[str] = []
    for name, view in sorted(snap.models.items()):
        tally = tallies.get(name, Tally())
        # The ledger's numbers (written at every grant); the model's status follows them.
        current = snap.budgets.get(view.budget)
        spent = current.epsilon_spent if current is not None else view.epsilon_spent
        limit = current.epsilon_limit if current is not None else (view.epsilon_limit or 0.0)
        names = {str(v.get("budget")) for v in view.versions} | {view.budget}
        lifetime = sum(snap.budgets[b].epsilon_spent for b in names if b in snap.budgets)
        bar = ProgressBar(total=max(limit, 1e-9), completed=min(spent, limit), width=10,
                          complete_style="magenta", finished_style="red")
        if tally.refused:
            refusals.append(f"{name} " + " ".join(
                f"{SHORT.get(k, k)}×{v}" for k, v in sorted(tally.refused.items())))
        accuracy = f"{tally.accuracy:.0%}" if tally.accuracy is not None else "-"
        versions = " ".join(f"{v}:{n}" for v, n in sorted(tally.by_version.items()))
        models.add_row(
            name, Text(view.phase, style=PHASE_STYLE.get(view.phase, "")),
            f"{snap.endpoints.get(name, 0)}/{view.replicas}", view.version,
            f"{spent:.3f}/{limit:g}", bar, f"{max(lifetime, view.lifetime_epsilon):.3f}",
            versions or "-", accuracy,
        )
    models.caption = "refused: " + ("; ".join(refusals) or "none") + \
        " (429: budget exhausted at the sidecar, 503: ledger unreachable, no-pod: no endpoint)"

    # One compact row per tenant: what its own partition spent, and its traffic.
    tenants = Table(title_justify="left", box=box.SIMPLE_HEAVY)
    for column in ("tenant", "ε spent/limit", "", "granted", "texts/requests", "refused"):
        tenants.add_column(column, no_wrap=True)
    for name, view in sorted(snap.models.items()):
        budget = snap.budgets.get(view.budget)
        if budget is None or not budget.partitions:
            continue
        for tenant, part in sorted(budget.partitions.items()):
            tally = tallies.get(lane_name(name, tenant), Tally())
            bar = ProgressBar(total=max(part.epsilon_limit, 1e-9),
                              completed=min(part.epsilon_spent, part.epsilon_limit), width=10,
                              complete_style="magenta", finished_style="red")
            refused = " ".join(f"{SHORT.get(k, k)}×{v}" for k, v in sorted(tally.refused.items()))
            tenants.title = (f"Tenants of {name} ({budget.header}): each on its own partition "
                             f"of {budget.name}, whose dataset ledger stays untouched")
            tenants.add_row(tenant,
                            f"{part.epsilon_spent:.3f}/{part.epsilon_limit:g}", bar,
                            str(part.granted), f"{tally.outputs}/{tally.answered}",
                            refused or "-")

    budgets = Table(title="PrivacyBudgets", title_justify="left", box=box.SIMPLE_HEAVY)
    for column in ("budget", "ε spent", "ε limit", "queries granted", "exhausted"):
        budgets.add_column(column, no_wrap=True)
    for name, budget in sorted(snap.budgets.items()):
        budgets.add_row(name, f"{budget.epsilon_spent:.4f}", f"{budget.epsilon_limit:g}",
                        str(budget.granted), "yes" if budget.exhausted else "no")

    events = Table(title="Recent events", expand=True, title_justify="left",
                   box=box.SIMPLE_HEAVY)
    for column in ("time", "type", "object", "reason", "message"):
        events.add_column(column, no_wrap=column != "message", overflow="fold")
    for event in snap.events:
        events.add_row(event.time, event.type, event.object, event.reason,
                       event.message[:160])

    header = Text.assemble((title, "bold"), f"  ({elapsed_s:.0f}s)\n", (hint, "dim"))
    parts: list[RenderableType] = [header, models]
    if tenants.row_count:
        parts.append(tenants)
    return Panel(Group(*parts, budgets, events), border_style="blue")
