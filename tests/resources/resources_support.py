"""Shared by the builder tests: every pure builder of dpserve.resources."""

from __future__ import annotations

from dpserve.resources import (
    build_configmap,
    build_deployment,
    build_job,
    build_networkpolicy,
    build_poddisruptionbudget,
    build_service,
    build_serviceaccount,
    build_training_networkpolicy,
)

BUILDERS = [
    build_deployment,
    build_service,
    build_configmap,
    build_serviceaccount,
    build_networkpolicy,
    build_training_networkpolicy,
    build_poddisruptionbudget,
    build_job,
]
