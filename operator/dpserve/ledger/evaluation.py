"""Calling the accountant safely: finite ε or a ValueError that says what failed.

What the accountant (numpy, dp-accounting, the events' own checks) raises when it cannot
evaluate a spend: ZeroDivisionError, OverflowError and FloatingPointError are
ArithmeticErrors. The schema's bounds keep admitted specs out of this; a spec that skipped
admission (or a ledger entry written before the bounds) must still end in a condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dpserve.accounting.events import Event, Spend
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.limits import Limits

ACCOUNTING_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError)
ACCOUNTING_FAILED = "AccountingFailed"


def accounting_message(exc: Exception) -> str:
    """The error as one line: a ValueError's own message (it names the field), otherwise
    the arithmetic error's type too (``float division by zero`` alone says little)."""
    text = str(exc)
    if isinstance(exc, ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def finite_epsilon(value: float, where: str) -> float:
    """``value``, or a ValueError: an infinite or NaN ε is a failed computation, never a
    spend (inf would read as "exhausted", NaN compares false to every limit)."""
    if not math.isfinite(value):
        raise ValueError(f"{where}: the accountant returned ε = {value!r}")
    return value


def evaluable(event: Event, limits: Limits, accounting: Accounting) -> Event:
    """``event``, once the accountant gives one release of it a finite ε (else it raises).

    ``max_additional`` works on RDP vectors in numpy, where an underflowed noise multiplier
    gives inf (with a warning, no exception) and so "0 more queries fit": the budget would
    be called exhausted for a mechanism the accountant simply cannot evaluate.
    """
    finite_epsilon(accounting.epsilon([(event, 1)], limits.delta, limits.kind), f"{event}")
    return event


def ledger_epsilon(
    spends: Sequence[Spend], limits: Limits, accounting: Accounting, where: str = "ledger"
) -> float:
    """ε of ``spends`` under the budget's δ and accountant, finite or a ValueError."""
    return finite_epsilon(accounting.epsilon(spends, limits.delta, limits.kind), where)
