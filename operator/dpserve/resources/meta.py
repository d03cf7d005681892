"""Object metadata shared by the builders, and the final canonical + hashed form.

Every built object carries ``dpserve.io/desired-hash``: the SHA-256 of its own canonical
JSON. :func:`dpserve.resources.diff.needs_update` compares the fields the operator sets;
because the hash is one of them, a field the operator *stops* setting (a profile switched to
``none`` drops runtimeClassName) still changes the desired object and triggers an update.
"""

from __future__ import annotations

from typing import Any

from dpserve.api.privatemodel import PrivateModel
from dpserve.resources.context import BuildContext, model_name, model_namespace
from dpserve.resources.labels import DESIRED_HASH, Component, object_labels
from dpserve.resources.ownership import owner_references
from dpserve.resources.render import Manifest, canonical, compact, content_hash


def object_meta(
    model: PrivateModel,
    ctx: BuildContext,
    name: str,
    component: Component,
    *,
    version: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return compact(
        {
            "name": name,
            "namespace": model_namespace(model),
            "labels": object_labels(model_name(model), version or ctx.model_version, component),
            "annotations": annotations or {},
            "ownerReferences": owner_references(ctx.owner),
        }
    )


def finalize(obj: Manifest) -> Manifest:
    """Canonical key order, plus the desired-hash annotation over everything else.

    One deep canonical pass: the hash is taken over sorted-key JSON (key order does not
    matter to it), and only the metadata, where the annotation goes, is sorted again.
    """
    body = canonical(obj)
    metadata = body.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop(DESIRED_HASH, None)
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    digest = content_hash(body)
    metadata["annotations"] = {**annotations, DESIRED_HASH: digest}
    body["metadata"] = canonical(metadata)
    return {key: body[key] for key in sorted(body)}
