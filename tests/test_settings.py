"""The operator's settings from the environment: refused with the variable's name."""

from __future__ import annotations

import pytest

from dpserve.resources.labels import DEFAULT_OPERATOR_POD_LABELS
from dpserve.settings import OperatorSettings

TLS = {"DPSERVE_LEDGER_TLS_CERT": "/tls/tls.crt", "DPSERVE_LEDGER_TLS_KEY": "/tls/tls.key",
       "DPSERVE_LEDGER_TLS_CA": "/tls/ca.crt"}


def test_defaults_are_closed() -> None:
    settings = OperatorSettings.from_env(TLS)
    assert settings.allow_host_path_artifacts is False
    assert dict(settings.operator_pod_labels) == DEFAULT_OPERATOR_POD_LABELS
    assert settings.ledger_url.startswith("https://")
    assert settings.ledger_insecure is False


def test_chart_values_reach_the_settings() -> None:
    settings = OperatorSettings.from_env({
        **TLS,
        "DPSERVE_ALLOW_HOST_PATH_ARTIFACTS": "true",
        "DPSERVE_OPERATOR_POD_LABELS":
            "app.kubernetes.io/name=privacy,app.kubernetes.io/instance=r",
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
        OperatorSettings.from_env({**TLS, name: value})


def test_the_ledger_never_serves_plain_http_by_accident() -> None:
    with pytest.raises(ValueError, match="DPSERVE_LEDGER_TLS_CERT"):
        OperatorSettings.from_env({})
    with pytest.raises(ValueError, match=r"^DPSERVE_LEDGER_URL: .* must be https://"):
        OperatorSettings.from_env({**TLS, "DPSERVE_LEDGER_URL": "http://ledger:8443"})
    with pytest.raises(ValueError, match=r"^DPSERVE_LEDGER_INSECURE: "):
        OperatorSettings.from_env({**TLS, "DPSERVE_LEDGER_INSECURE": "true",
                                   "DPSERVE_LEDGER_URL": "http://ledger:8443"})
    local = OperatorSettings.from_env({"DPSERVE_LEDGER_INSECURE": "true",
                                       "DPSERVE_LEDGER_URL": "http://127.0.0.1:8443"})
    assert local.ledger_insecure and local.ledger_tls_ca is None


def test_serving_pods_get_dns_only_when_told() -> None:
    assert OperatorSettings.from_env(TLS).serving_dns_egress is False
    outside = {**TLS, "DPSERVE_LEDGER_URL": "https://ledger.example.org:8443"}
    with pytest.raises(ValueError, match=r"^DPSERVE_LEDGER_URL: host 'ledger.example.org' .*"
                                         r"DPSERVE_SERVING_DNS_EGRESS=true"):
        OperatorSettings.from_env(outside)
    # A Service of another namespace: the operator cannot read it to pin its address.
    with pytest.raises(ValueError, match="DPSERVE_SERVING_DNS_EGRESS"):
        OperatorSettings.from_env({**TLS, "DPSERVE_LEDGER_URL": "https://l.other.svc:8443"})
    allowed = OperatorSettings.from_env({**outside, "DPSERVE_SERVING_DNS_EGRESS": "true"})
    assert allowed.serving_dns_egress is True
    with pytest.raises(ValueError, match=r"^DPSERVE_SERVING_DNS_EGRESS: "):
        OperatorSettings.from_env({**TLS, "DPSERVE_SERVING_DNS_EGRESS": "yes"})
    custom_domain = "https://dpserve-ledger.dpserve-system.svc.corp.example:8443"
    assert OperatorSettings.from_env({**TLS, "DPSERVE_LEDGER_URL": custom_domain})
