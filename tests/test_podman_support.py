"""Where the podman tests must run (CI after images/ci-setup.sh), they fail instead of
skipping (issue 13, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

import podman_support


@pytest.fixture
def unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(podman_support, "unavailable_reason", lambda: "podman is not installed")
    monkeypatch.setenv(podman_support.CI_MARKER_ENV, str(tmp_path))
    monkeypatch.delenv("DPSERVE_REQUIRE_PODMAN", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return tmp_path / "podman-ready"


def test_a_developer_machine_skips(unavailable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pytest.skip.Exception):
        podman_support.check_podman()
    monkeypatch.setenv("CI", "true")  # CI, but ci-setup.sh did not succeed here
    with pytest.raises(pytest.skip.Exception):
        podman_support.check_podman()


def test_ci_after_ci_setup_fails_instead(unavailable: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable.write_text("")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"must run here .*ci-setup\.sh succeeded"):
        podman_support.check_podman()


def test_required_explicitly(unavailable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPSERVE_REQUIRE_PODMAN", "1")
    with pytest.raises(pytest.fail.Exception, match="DPSERVE_REQUIRE_PODMAN=1"):
        podman_support.check_podman()


def test_ci_setup_leaves_the_marker(tmp_path: Path) -> None:
    """Run where podman, runc and debootstrap are present (the no-op path) or as root."""
    import os
    import shutil
    import subprocess

    if not all(shutil.which(t) for t in ("podman", "runc", "debootstrap")):
        pytest.skip("ci-setup.sh would install packages here")
    script = podman_support.REPO / "images" / "ci-setup.sh"
    subprocess.run(["bash", str(script)], check=True,
                   env={**os.environ, podman_support.CI_MARKER_ENV: str(tmp_path)})
    assert (tmp_path / "podman-ready").exists()
