"""podman from the tests: the CLI with the project's containers.conf, plus HTTP polling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO / "images" / "containers.conf"
BUILD_SCRIPT = REPO / "images" / "build.sh"
TAG = os.environ.get("DPSERVE_IMAGE_TAG", "dev")
OPERATOR_IMAGE = f"localhost/dpserve-operator:{TAG}"
INFERENCE_IMAGE = f"localhost/dpserve-inference:{TAG}"

T = TypeVar("T")


# images/ci-setup.sh leaves this file when podman, runc and debootstrap are in place.
CI_MARKER_ENV = "DPSERVE_CI_STATE"
CI_MARKER_DEFAULT = "/var/tmp/dpserve-ci"


def ci_marker() -> Path:
    return Path(os.environ.get(CI_MARKER_ENV) or CI_MARKER_DEFAULT) / "podman-ready"


def unavailable_reason() -> str | None:
    """Why the podman tests cannot run here (None: they can)."""
    if shutil.which("podman") is None:
        return "podman is not installed (CI installs it: images/ci-setup.sh)"
    if os.geteuid() != 0:
        return "podman tests run as root (rootless podman needs subuid setup and cgroups)"
    return None


def required_reason() -> str | None:
    """Why the podman tests must run here (None: a skip is fine).

    ``DPSERVE_REQUIRE_PODMAN=1``, or CI (``CI=true``, as CI services set it) on a machine where
    images/ci-setup.sh succeeded: there a skipped podman test would hide that the images were
    never tested, so it fails instead.
    """
    if os.environ.get("DPSERVE_REQUIRE_PODMAN") == "1":
        return "DPSERVE_REQUIRE_PODMAN=1"
    if os.environ.get("CI", "").lower() in ("true", "1") and ci_marker().exists():
        return f"CI, and images/ci-setup.sh succeeded ({ci_marker()})"
    return None


def check_podman() -> None:
    """Return when the podman tests can run; else skip them, or fail where they must run."""
    reason = unavailable_reason()
    if reason is None:
        return
    required = required_reason()
    if required is not None:
        pytest.fail(f"the podman tests must run here ({required}) but cannot: {reason}",
                    pytrace=False)
    pytest.skip(reason)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


@dataclass(frozen=True)
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(self.args)} exited {self.returncode}:\n"
                f"{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
            )
        return self


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> Result:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env(),
        check=False,
    )
    result = Result(args, proc.returncode, proc.stdout, proc.stderr)
    return result.check() if check else result


def exec_in(container: str, script: str, *, check: bool = False) -> Result:
    """``sh -c script`` inside a running container, as the container's own user."""
    return podman("exec", container, "sh", "-c", script, timeout=60, check=check)


def build_images(timeout: float) -> str:
    """Run images/build.sh (layer cache: seconds when nothing changed); returns its output."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout,
        env=podman_env(), check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"images/build.sh failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc.stdout


def logs(container: str, tail: int = 60) -> str:
    result = podman("logs", "--tail", str(tail), container, check=False)
    return f"--- {container} ---\n{result.stdout}{result.stderr}"


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """(status, parsed JSON or text); connection errors raise OSError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float,
    diagnostics: Callable[[], str] = lambda: "", interval_s: float = 0.5,
) -> T:
    """Poll ``probe`` until it returns a value (not None); fail with diagnostics on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = probe()
        except OSError as exc:
            value, last_error = None, repr(exc)
        if value is not None:
            return value
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what} {last_error}\n{diagnostics()}"
    )


def http_ok(url: str) -> Callable[[], bool | None]:
    def probe() -> bool | None:
        status, _ = http("GET", url, timeout=2)
        return True if status == 200 else None

    return probe
