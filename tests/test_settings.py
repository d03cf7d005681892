"""The operator's settings from the environment: refused with the variable's name."""

from __future__ import annotations

import pytest

from dpserve.resources.labels import DEFAULT_OPERATOR_POD_LABELS
from dpserve.settings import OperatorSettings


def test_defaults_are_closed() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.allow_host_path_artifacts is False
    assert dict(settings.operator_pod_labels) == DEFAULT_OPERATOR_POD_LABELS


def test_chart_values_reach_the_settings() -> None:
    settings = OperatorSettings.from_env({
        "DPSERVE_ALLOW_HOST_PATH_ARTIFACTS": "true",
        "DPSERVE_OPERATOR_POD_LABELS": "app.kubernetes.io/name=privacy,app.kubernetes.io/instance=r",
    })
    assert settings.allow_host_path_artifacts is True
    assert dict(settings.operator_pod_labels) == {"app.kubernetes.io/name": "privacy",
                                                  "app.kubernetes.io/instance": "r"}


@pytest.mark.parametrize(("name", "value"), [
    ("DPSERVE_ALLOW_HOST_PATH_ARTIFACTS", "yes"),
    ("DPSERVE_OPERATOR_POD_LABELS", "app.kubernetes.io/name"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: "):
        OperatorSettings.from_env({name: value})
