"""Labels and annotation keys on everything the operator renders.

Kubernetes recommended labels plus ``dpserve.io/model``. Selector labels leave out the
version, so a Deployment's selector (immutable) survives every retrain.
"""

from __future__ import annotations

from typing import Literal

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
VERSION = "app.kubernetes.io/version"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
MODEL = "dpserve.io/model"

APP_NAME = "dpserve-model"
PART_OF_VALUE = "dpserve"
MANAGED_BY_VALUE = "dpserve-operator"

# Annotations the operator sets.
FILTER_CONFIG_HASH = "dpserve.io/filter-config-hash"
MODEL_VERSION = "dpserve.io/model-version"
# On a training Job: how many ids of the model's erased-id list it was given (it removes
# at least those; the list only grows).
ERASED_IDS = "dpserve.io/erased-ids"
DESIRED_HASH = "dpserve.io/desired-hash"

# Serving pods and training pods differ by component, so neither the Service nor the
# serving NetworkPolicy ever selects a training pod.
Component = Literal["inference", "training", "filter-config", "identity", "network", "service"]
INFERENCE: Component = "inference"
TRAINING: Component = "training"

# Labels of the operator's own pods (the ledger lives in the operator process): the model's
# NetworkPolicy allows egress to them. The Helm chart must put these on the operator pods.
DEFAULT_OPERATOR_POD_LABELS: dict[str, str] = {
    NAME: "dpserve",
    COMPONENT: "operator",
}


def selector_labels(model: str, component: Component = INFERENCE) -> dict[str, str]:
    """Labels that select a model's pods of one component; stable across versions."""
    return {NAME: APP_NAME, INSTANCE: model, COMPONENT: component, MODEL: model}


def object_labels(model: str, version: str, component: Component) -> dict[str, str]:
    """Full label set of an object (and of pod templates) of one model version."""
    return {
        NAME: APP_NAME,
        INSTANCE: model,
        VERSION: version,
        COMPONENT: component,
        PART_OF: PART_OF_VALUE,
        MANAGED_BY: MANAGED_BY_VALUE,
        MODEL: model,
    }
