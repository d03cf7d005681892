"""dpserve's test kit: everything tests, benchmarks and the local demo need, none of it product.

- :mod:`dpserve_testkit.localkube`: an embedded Kubernetes API and a local kubelet;
- :mod:`dpserve_testkit.demo`: ``dpserve-demo``, the whole system on one machine;
- :mod:`dpserve_testkit.memory_store`: the ledger's in-memory store with injectable faults;
- :mod:`dpserve_testkit.fakes`: a fake ledger and a fake model server for the filter sidecar;
- :mod:`dpserve_testkit.crash`: the ledger that dies between persisting a grant and replying.

A separate distribution (``testkit/pyproject.toml``): scripts/test.sh and scripts/demo.sh
install it next to ``dpserve``; neither image does (tests/images/test_podman.py and
tests/test_testkit_separation.py check).
"""
