"""DP accounting for the ledger: events -> (epsilon, delta), and how many more fit.

Torch-free (dp-accounting, numpy, scipy). See docs/accounting.md for the bounds.
"""

from dpserve.accounting.accountant import (
    DEFAULT_LIMIT,
    DEFAULT_PLD_DISCRETIZATION,
    Accountant,
    epsilon_of_additional,
    epsilon_spent,
    max_additional,
    shared_accountant,
)
from dpserve.accounting.compose import ACCOUNTANT_KINDS, AccountantKind
from dpserve.accounting.events import (
    MECHANISM_EVENTS,
    SAMPLING_SCHEMES,
    DPEvent,
    Event,
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    Sampling,
    Spend,
    SubsampledGaussian,
)
from dpserve.accounting.orders import DEFAULT_ORDERS, OPACUS_ORDERS

__all__ = [
    "ACCOUNTANT_KINDS",
    "DEFAULT_LIMIT",
    "DEFAULT_ORDERS",
    "DEFAULT_PLD_DISCRETIZATION",
    "MECHANISM_EVENTS",
    "OPACUS_ORDERS",
    "SAMPLING_SCHEMES",
    "Accountant",
    "AccountantKind",
    "DPEvent",
    "Event",
    "GNMaxQuery",
    "GaussianQuery",
    "LaplaceQuery",
    "Sampling",
    "Spend",
    "SubsampledGaussian",
    "epsilon_of_additional",
    "epsilon_spent",
    "max_additional",
    "shared_accountant",
]
