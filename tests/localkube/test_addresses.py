"""Two LocalKube stacks on one machine never hand out the same pod address."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dpserve_testkit.localkube.kubelet.mapping import AddressPool


def test_two_pools_in_one_process_take_disjoint_blocks(tmp_path: Path) -> None:
    first, second = AddressPool(tmp_path), AddressPool(tmp_path)
    a = {first.take() for _ in range(300)}  # crosses into a second block
    b = {second.take() for _ in range(300)}
    assert len(a) == 300 and len(b) == 300 and not a & b
    assert first.take().startswith("127.0.") and "127.0.0." not in " ".join(a | b)
    first.close()
    second.close()


def test_a_pool_of_another_process_is_avoided_until_it_exits(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from pathlib import Path\n"
         "from dpserve_testkit.localkube.kubelet.mapping import AddressPool\n"
         f"pool = AddressPool(Path({str(tmp_path)!r}))\n"
         "print(pool.take(), flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    theirs = holder.stdout.readline().strip()
    ours = AddressPool(tmp_path)
    mine = ours.take()
    assert theirs == "127.0.1.2" and mine == "127.0.2.2"
    holder.stdin.close()
    holder.wait(timeout=30)
    # The exited stack's block is free again for a new stack.
    assert AddressPool(tmp_path).take() == "127.0.1.2"
    ours.close()
