"""The test kit is its own distribution: the `dpserve` wheel, which both images install, holds
none of it (no embedded API, demo, fakes, in-memory store or crash hook), and neither
Dockerfile copies it. tests/images/test_podman.py checks the built images themselves."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = (REPO / "operator" / "Dockerfile", REPO / "inference-image" / "Dockerfile")


def _smoke() -> ModuleType:
    """images/smoke.py: the scan the image builds run (standard library only)."""
    spec = importlib.util.spec_from_file_location("smoke", REPO / "images" / "smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _smoke()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `dpserve` wheel built from a copy of the tree, test kit included, unpacked."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("operator", "inference-image", "testkit"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp / "out"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = (tmp / "out").glob("dpserve-*.whl")
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(built) as archive:
        archive.extractall(unpacked)
    return unpacked


def test_the_dpserve_wheel_holds_no_test_infrastructure(wheel: Path) -> None:
    top = sorted(p.name for p in wheel.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["dpserve", "dpserve_runtime"]
    found = [hit for package in top for hit in smoke.test_infrastructure(wheel / package, package)]
    assert found == []
    (entry_points,) = wheel.glob("*.dist-info/entry_points.txt")
    scripts = re.findall(r"^(\S+) = ", entry_points.read_text("utf-8"), re.MULTILINE)
    assert "dpserve" in scripts and "dpserve-demo" not in scripts
    # The product is still all there: the scan is not passing an empty wheel.
    assert (wheel / "dpserve" / "ledger" / "service.py").is_file()
    assert (wheel / "dpserve_runtime" / "filter" / "app.py").is_file()


def test_the_scan_finds_each_kind_of_test_infrastructure(tmp_path: Path) -> None:
    # On the test kit itself: its modules, classes and imports.
    found = "\n".join(smoke.test_infrastructure(REPO / "testkit" / "dpserve_testkit", "kit"))
    for expected in ("kit/localkube/server.py: module localkube",
                     "kit/memory_store.py: module memory_store", "class MemoryStore",
                     "class FakeLedger", "class LocalKubeServer", "imports kmock",
                     "imports dpserve_testkit.", "kit/crash.py: module crash"):
        assert expected in found, expected
    # A product-looking package with the crash switch as it once was (an environment name).
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "settings.py").write_text(
        'HOOK = "DPSERVE_LEDGER_CRASH_AFTER_PERSIST"\n', encoding="utf-8")
    assert smoke.test_infrastructure(package, "pkg") == [
        "pkg/settings.py:1: string CRASH_AFTER_PERSIST"]


def test_the_source_packages_hold_no_test_infrastructure() -> None:
    for package, root in (("dpserve", REPO / "operator" / "dpserve"),
                          ("dpserve_runtime", REPO / "inference-image" / "dpserve_runtime")):
        assert smoke.test_infrastructure(root, package) == []


def test_no_dockerfile_copies_the_test_kit() -> None:
    for dockerfile in DOCKERFILES:
        text = re.sub(r"\\\n", " ", dockerfile.read_text("utf-8"))
        copies = [line for line in text.splitlines() if line.strip().startswith("COPY ")]
        assert copies, dockerfile
        assert not [c for c in copies if "testkit" in c or re.search(r"COPY \.\s", c)], (
            dockerfile, copies)
        assert "smoke.py" in text  # the build runs the scan above on what it installed
