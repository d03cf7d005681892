"""Server-side ``meta.k8s.io/v1 Table`` responses, so ``kubectl get`` shows printer columns.

kubectl asks for ``application/json;as=Table``; a server that answers a plain list makes
kubectl print only NAME and AGE, so the CRDs' additionalPrinterColumns need this rendering.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from dpserve_testkit.localkube import jsonpath
from dpserve_testkit.localkube.kinds import Kind

_NAME = {"name": "Name", "type": "string", "format": "name", "priority": 0,
         "description": "Name must be unique within a namespace."}
_AGE = {"name": "Age", "type": "string", "priority": 0,
        "description": "CreationTimestamp is a timestamp representing the server time when "
                       "this object was created."}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    seconds = int((datetime.datetime.now(datetime.UTC) - created).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    values = jsonpath.find(obj, column["jsonPath"])
    if not values:
        return None
    value = values[0]
    if column.get("type") == "date":
        return _age(value) if isinstance(value, str) else None
    if isinstance(value, dict | list):
        return json.dumps(value)
    if column.get("type") == "integer" and isinstance(value, int | float):
        return int(value)
    return value if isinstance(value, int | float | bool) else str(value)


def columns_for(kind: Kind) -> list[dict[str, Any]]:
    if not kind.columns:
        return [_NAME, _AGE]
    out = [_NAME]
    for column in kind.columns:
        out.append({
            "name": column["name"],
            "type": "string" if column.get("type") == "date" else column.get("type", "string"),
            "format": column.get("format", ""),
            "description": column.get("description", ""),
            "priority": column.get("priority", 0),
        })
    return out


def _row(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    if kind.columns:
        cells = [meta.get("name"), *(_cell(obj, c) for c in kind.columns)]
    else:
        cells = [meta.get("name"), _age(meta.get("creationTimestamp"))]
    return {
        "cells": cells,
        "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": meta},
    }


def table(kind: Kind, items: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
    return {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "Table",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns_for(kind),
        "rows": [_row(kind, obj) for obj in items],
    }
