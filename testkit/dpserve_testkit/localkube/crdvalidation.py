"""Validate a custom resource the way the API server does: defaults, schema, then CEL.

Used by the embedded API (demo and tests) so that invalid objects are refused with the same
field-naming messages a cluster gives, and by the tests that check every example and every
invalid CR against the generated CRDs.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from dpserve.api.cel import NO_OLD, CelRule, evaluate

Schema = dict[str, Any]


def crd_schema(crd: dict[str, Any], version: str | None = None) -> Schema:
    for entry in crd["spec"]["versions"]:
        if version is None or entry["name"] == version:
            schema: Schema = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def apply_defaults(obj: Any, schema: Schema) -> Any:
    """Return a copy of obj with the schema's defaults filled in (as the API server does)."""
    obj = copy.deepcopy(obj)
    _default(obj, schema)
    return obj


def _default(obj: Any, schema: Schema) -> None:
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for value in obj.values():
                _default(value, extra)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default(item, schema["items"])


def _path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_errors(obj: Any, schema: Schema) -> list[str]:
    """OpenAPI structural-schema violations, each prefixed by the field path."""
    view = _jsonschema_view(schema)
    if isinstance(view.get("properties"), dict):  # every object may carry these at the root
        view["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                              "metadata": {"type": "object"}} | view["properties"]
    validator = jsonschema.Draft7Validator(view)
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = _path(list(err.absolute_path)) or "<root>"
        if err.validator == "required":
            missing = err.message.split("'")[1]
            errors.append(f"{_path([*err.absolute_path, missing])}: Required value")
        elif err.validator == "additionalProperties":
            errors.append(f"{where}: unknown field: {err.message}")
        elif err.validator == "enum":
            allowed = ", ".join(f'"{v}"' for v in err.validator_value)
            errors.append(f"{where}: Unsupported value: {err.instance!r}: "
                          f"supported values: {allowed}")
        else:
            errors.append(f"{where}: Invalid value: {err.instance!r}: {err.message}")
    return errors


def _jsonschema_view(schema: Any) -> Any:
    """Drop the Kubernetes extensions jsonschema does not know (they carry no constraint).

    Unknown fields are refused, as the API server's strict field validation (kubectl's
    default) does, unless the node preserves unknown fields.
    """
    if isinstance(schema, dict):
        view = {k: _jsonschema_view(v) for k, v in schema.items() if not k.startswith("x-")}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            view["additionalProperties"] = False
        return view
    if isinstance(schema, list):
        return [_jsonschema_view(v) for v in schema]
    return schema


def cel_errors(obj: Any, schema: Schema, parts: list[str | int] | None = None,
               old: Any = NO_OLD) -> list[str]:
    """x-kubernetes-validations violations, evaluated bottom-up with the node as ``self``.

    ``old``: the same node before an update (``NO_OLD`` on a create). As the API server
    does, a transition rule (one reading ``oldSelf``) is evaluated only where the node can be
    correlated with the old object: through object properties and map keys, and through the
    items of a ``x-kubernetes-list-type: map`` list by their keys; never on a create, on a
    node that is new, or in an atomic list.
    """
    parts = parts or []
    errors: list[str] = []
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                errors += cel_errors(obj[name], sub, [*parts, name], _child(old, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                errors += cel_errors(value, extra, [*parts, key], _child(old, key))
    elif isinstance(obj, list) and "items" in schema:
        olds = _map_list_items(old, schema)
        for index, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], [*parts, index],
                                 olds.get(_map_key(item, schema), NO_OLD))
    for raw in schema.get("x-kubernetes-validations", []):
        rule = CelRule(raw["rule"], raw.get("message", raw["rule"]), raw.get("fieldPath"))
        if not evaluate(rule, obj, old):
            where = _path(parts) + (rule.field_path or "")
            errors.append(f"{where or '<root>'}: Invalid value: {rule.message}")
    return errors


def _child(old: Any, key: str) -> Any:
    return old[key] if isinstance(old, dict) and key in old else NO_OLD


def _map_key(item: Any, schema: Schema) -> tuple[Any, ...] | None:
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def _map_list_items(old: Any, schema: Schema) -> dict[tuple[Any, ...] | None, Any]:
    """The old items of a map list by their keys (empty for other lists: not correlated)."""
    if not isinstance(old, list) or schema.get("x-kubernetes-list-type") != "map":
        return {}
    out = {_map_key(item, schema): item for item in old}
    out.pop(None, None)
    return out


def validate(obj: dict[str, Any], crd: dict[str, Any],
             old: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Default then validate ``obj``; returns (defaulted object, errors). No errors = admitted.

    ``old``: on an update, the stored object it replaces (transition rules see it as
    ``oldSelf``); None on a create.
    """
    schema = crd_schema(crd, obj.get("apiVersion", "/").split("/")[-1] or None)
    defaulted = apply_defaults(obj, schema)
    errors = schema_errors(defaulted, schema)
    if not errors:  # like the API server, CEL runs only on a schema-valid object
        errors = cel_errors(defaulted, schema, old=NO_OLD if old is None else old)
    return defaulted, errors


def status_errors(obj: dict[str, Any], crd: dict[str, Any],
                  old: dict[str, Any] | None = None) -> list[str]:
    """Schema and CEL violations of a /status write: the status' own rules, then the root
    rules with the whole object (a status write may break a rule of the root that reads the
    status, transition rules included, ``old`` being the stored object)."""
    schema = crd_schema(crd, obj.get("apiVersion", "/").split("/")[-1] or None)
    status_schema = schema.get("properties", {}).get("status")
    if status_schema is None or "status" not in obj:
        return []
    errors = [f"status{e[len('<root>'):] if e.startswith('<root>') else '.' + e}"
              for e in schema_errors(obj["status"], status_schema)]
    if not errors:
        errors = cel_errors(obj["status"], status_schema, ["status"],
                            _child(old, "status") if old is not None else NO_OLD)
    if not errors:
        root_only = {k: v for k, v in schema.items() if k != "properties"}
        errors = cel_errors(obj, root_only, old=NO_OLD if old is None else old)
    return errors


# The API server's own fields of every object, never pruned nor unknown.
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def prune_unknown_fields(obj: Any, crd: dict[str, Any]) -> Any:
    """Drop fields the structural schema does not declare, as the API server prunes them.

    ``metadata`` is the API server's own and is never pruned; maps declared with
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` keep their keys.
    """
    schema = crd_schema(crd, obj.get("apiVersion", "/").split("/")[-1] or None)
    pruned = _prune(copy.deepcopy(obj), schema)
    for root in ROOT_FIELDS:  # every object has them, whatever its schema declares
        if root in obj:
            pruned[root] = copy.deepcopy(obj[root])
    return pruned


def _prune(obj: Any, schema: Schema) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: _prune(v, extra) for k, v in obj.items()}
        if props is None:
            return obj if schema.get("type") != "object" else {}
        return {k: _prune(v, props[k]) for k, v in obj.items() if k in props}
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"]) for item in obj]
    return obj


def unknown_fields(obj: Any, crd: dict[str, Any]) -> list[str]:
    """Paths of fields the schema does not declare (what pruning would drop)."""
    schema = crd_schema(crd, obj.get("apiVersion", "/").split("/")[-1] or None)
    found: list[str] = []
    _unknown({k: v for k, v in obj.items() if k not in ROOT_FIELDS}, schema, [], found)
    return found


def _unknown(obj: Any, schema: Schema, parts: list[str | int], found: list[str]) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if isinstance(extra, dict):
                _unknown(value, extra, [*parts, key], found)
            elif props is not None and key in props:
                _unknown(value, props[key], [*parts, key], found)
            elif props is not None or schema.get("type") == "object":
                found.append(_path([*parts, key]))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            _unknown(item, schema["items"], [*parts, index], found)
