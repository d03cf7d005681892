"""An embedded Kubernetes API for the local demo and the tests (kmock's emulator, extended)."""

from dpserve_testkit.localkube.emulator import LocalKube, WriteRecord
from dpserve_testkit.localkube.server import LocalKubeServer, serve, serving, write_kubeconfig
from dpserve_testkit.localkube.tokens import TokenRegistry

__all__ = [
    "LocalKube",
    "LocalKubeServer",
    "TokenRegistry",
    "WriteRecord",
    "serve",
    "serving",
    "write_kubeconfig",
]
