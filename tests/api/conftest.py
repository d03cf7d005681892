"""Shared fixtures of the API tests: the generated CRDs and the pydantic models, by kind."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from dpserve.api.crdgen import all_crds
from dpserve.api.erasurerequest import ErasureRequest
from dpserve.api.privacybudget import PrivacyBudget
from dpserve.api.privatemodel import PrivateModel


@pytest.fixture(scope="session")
def crds_by_kind() -> dict[str, dict[str, Any]]:
    return {crd["spec"]["names"]["kind"]: crd for crd in all_crds().values()}


@pytest.fixture(scope="session")
def models_by_kind() -> dict[str, type[BaseModel]]:
    return {"PrivacyBudget": PrivacyBudget, "PrivateModel": PrivateModel,
            "ErasureRequest": ErasureRequest}
