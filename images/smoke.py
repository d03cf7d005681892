"""Build-time check of an image's virtual environment: fail the build, not the pod.

    python smoke.py operator|inference
    python smoke.py shipped     (only the test-infrastructure scan below, as JSON: modules
                                 scanned per package, findings; tests/images runs it inside
                                 the finished images)

- Every module of the image's import package(s) imports with exactly the installed
  dependencies (a new import without its requirement fails here).
- Packages that must stay out of the image are absent (no ML runtime in the operator; no
  Kubernetes client in the data plane; in neither the test kit, dpserve_testkit).
- No test infrastructure in the shipped packages: no module named like the test kit's, no
  fake or in-memory store class, no import of the test kit or its emulator, no crash hook.
- inference: the native libraries still work after slimming (stripped .so files): a torch
  forward and backward pass, OpenDP's discrete Gaussian, a Presidio scan, the DP-SGD engine.

Standard library at the top level only: the imports under test happen inside the checks.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

# The test kit (testkit/, the dpserve-testkit distribution: embedded API, demo, fakes, the
# in-memory store, the crash hook) and its emulator's library are in no image.
TESTKIT = ("dpserve_testkit", "kmock")
ABSENT = {
    "operator": ("torch", "opacus", "opendp", "presidio_analyzer", "spacy", "dpserve_runtime",
                 *TESTKIT),
    "inference": ("kopf", "kubernetes_asyncio", "pip", *TESTKIT),
}
SHIPPED = ("dpserve", "dpserve_runtime")
# What test infrastructure looks like in a shipped package: module names of the test kit
# (they lived in dpserve and dpserve_runtime once), its classes, its import, the crash hook.
TESTKIT_MODULES = frozenset({"localkube", "demo", "fakes", "memory_store", "crash"})
TESTKIT_CLASSES = frozenset({"MemoryStore", "FakeLedger", "FakeModel", "LocalKubeServer"})
TESTKIT_STRINGS = ("CRASH_AFTER_PERSIST",)
# What the data plane imports from the control-plane distribution.
DATA_PLANE_SHARED = ("dpserve.api", "dpserve.accounting")


def import_tree(package: str) -> int:
    """Import ``package`` and every module below it; returns the count."""
    root = importlib.import_module(package)
    count = 1
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        count += 1
    return count


def test_infrastructure(root: Path, package: str) -> list[str]:
    """Findings of test infrastructure in the package whose directory is ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        where = f"{package}/{path.relative_to(root).as_posix()}"
        parts = {*path.relative_to(root).parent.parts, path.stem}
        found += [f"{where}: module {name}" for name in sorted(parts & TESTKIT_MODULES)]
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.ClassDef) and node.name in TESTKIT_CLASSES:
                found.append(f"{where}:{node.lineno}: class {node.name}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                found += [f"{where}:{node.lineno}: imports {name}" for name in names
                          if name.split(".")[0] in TESTKIT]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [f"{where}:{node.lineno}: string {marker}"
                          for marker in TESTKIT_STRINGS if marker in node.value]
    return found


def shipped_roots() -> dict[str, list[Path]]:
    """The directories of the installed packages of :data:`SHIPPED` (found, not imported)."""
    roots = {}
    for package in SHIPPED:
        spec = importlib.util.find_spec(package)
        if spec is not None:
            roots[package] = [Path(p) for p in spec.submodule_search_locations or []]
    return roots


def shipped_test_infrastructure() -> list[str]:
    """:func:`test_infrastructure` over every installed package of :data:`SHIPPED`."""
    return [found for package, roots in shipped_roots().items() for root in roots
            for found in test_infrastructure(root, package)]


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
    if argv == ["shipped"]:
        # How many modules were scanned too: an empty finding over nothing proves nothing.
        scanned = {package: sum(len(list(root.rglob("*.py"))) for root in roots)
                   for package, roots in shipped_roots().items()}
        print(json.dumps({"scanned": scanned, "found": shipped_test_infrastructure()}))
        return 0
    if len(argv) != 1 or argv[0] not in ABSENT:
        print("usage: smoke.py operator|inference|shipped", file=sys.stderr)
        return 2
    target = argv[0]
    check_absent(ABSENT[target])
    found = shipped_test_infrastructure()
    if found:
        raise SystemExit(f"smoke: test infrastructure in the image: {found}")
    if target == "operator":
        count = import_tree("dpserve")
    else:
        count = import_tree("dpserve_runtime")
        count += sum(import_tree(name) for name in DATA_PLANE_SHARED)
        check_native_inference()
    print(f"smoke: {target}: {count} modules import, native checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
