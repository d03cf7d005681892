"""Build-time check of an image's virtual environment: fail the build, not the pod.

    python smoke.py operator|inference

- Every module of the image's import package(s) imports with exactly the installed
  dependencies (a new import without its requirement fails here).
- Packages that must stay out of the image are absent (no ML runtime in the operator; no
  Kubernetes client in the data plane).
- inference: the native libraries still work after slimming (stripped .so files): a torch
  forward and backward pass, OpenDP's discrete Gaussian, a Presidio scan, the DP-SGD engine.

Standard library at the top level only: the imports under test happen inside the checks.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import warnings
from collections.abc import Iterable

# Modules that run only where the [demo] extra is installed (the local demo and its embedded
# Kubernetes API on kmock): never part of an image.
SKIPPED_PREFIXES = ("dpserve.localkube", "dpserve.demo")
ABSENT = {
    "operator": ("torch", "opacus", "opendp", "presidio_analyzer", "spacy", "dpserve_runtime"),
    "inference": ("kopf", "kubernetes_asyncio", "kmock", "pip"),
}
# What the data plane imports from the control-plane distribution.
DATA_PLANE_SHARED = ("dpserve.api", "dpserve.accounting")


def import_tree(package: str, skip: Iterable[str] = ()) -> int:
    """Import ``package`` and every module below it; returns the count."""
    skipped = tuple(skip)
    root = importlib.import_module(package)
    count = 1
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.startswith(skipped):
            continue
        importlib.import_module(info.name)
        count += 1
    return count


def check_absent(names: Iterable[str]) -> None:
    present = [name for name in names if importlib.util.find_spec(name) is not None]
    if present:
        raise SystemExit(f"smoke: must not be installed in this image: {present}")


def check_native_inference() -> None:
    import torch
    from opacus import PrivacyEngine

    from dpserve_runtime.architectures import build_model
    from dpserve_runtime.filter.pii import PiiAnalyzer
    from dpserve_runtime.noise import discrete_gaussian_votes

    model = build_model({"type": "cnn", "inputShape": [1, 8, 8], "channels": [4],
                         "numClasses": 3})
    batch = torch.zeros(2, 1, 8, 8)
    loss = model(batch).sum()
    loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Secure RNG turned off": no training here
        engine = PrivacyEngine(accountant="rdp")
    del engine
    noisy = discrete_gaussian_votes(3, 2.0)([5, 1, 0])
    if len(noisy) != 3:
        raise SystemExit(f"smoke: OpenDP returned {noisy!r}")
    findings = PiiAnalyzer(["EMAIL_ADDRESS"]).analyze("write to jane.doe@example.org")
    if not findings:
        raise SystemExit("smoke: the PII scanner found no e-mail address")
    # The PERSON/LOCATION gazetteer checks its data files' pinned digests: a missing or
    # changed file fails the build here, not a pod at start.
    from dpserve_runtime.filter.names import load_gazetteer

    load_gazetteer()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ABSENT:
        print("usage: smoke.py operator|inference", file=sys.stderr)
        return 2
    target = argv[0]
    check_absent(ABSENT[target])
    if target == "operator":
        count = import_tree("dpserve", SKIPPED_PREFIXES)
    else:
        count = import_tree("dpserve_runtime")
        count += sum(import_tree(name) for name in DATA_PLANE_SHARED)
        check_native_inference()
    print(f"smoke: {target}: {count} modules import, native checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
