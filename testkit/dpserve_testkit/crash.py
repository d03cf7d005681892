"""Crash after persist: the ledger dies between a grant's status write and its reply.

    python -m dpserve_testkit.crash kill|hang operator run --standalone ...
    python -m dpserve_testkit.crash kill|hang ledger --port 0

runs ``dpserve.cli`` (the operator) or ``dpserve.ledger`` (the ledger alone) with
:meth:`LedgerService._grant` wrapped: once a grant is persisted (``_grant`` returns only
after its status write landed; a replay writes nothing) and before the handler replies, the
process SIGKILLs itself (``kill``) or blocks its event loop until killed (``hang``). That is
the ambiguous moment the lease-id retry must resolve: the spend is on the ledger, the client
never heard.

The product has no such switch: this module is in the dpserve-testkit distribution, which no
image installs (tests/images and tests/test_testkit_separation.py check it).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from dpserve.ledger.service import LedgerService

CrashMode = Literal["kill", "hang"]
MODES: tuple[CrashMode, ...] = ("kill", "hang")

log = logging.getLogger("dpserve_testkit.crash")


def crash(mode: CrashMode) -> None:
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    log.warning("crash hook: hanging after persist until killed")
    while True:  # block the loop on purpose: nothing may answer
        time.sleep(3600)


def install(mode: CrashMode) -> None:
    """Make every LedgerService of this process crash after persisting a grant."""
    original: Callable[..., Awaitable[Any]] = LedgerService._grant

    @functools.wraps(original)
    async def grant_then_crash(self: LedgerService, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        if result.changed:  # a status write landed (a replay of a known lease id writes none)
            crash(mode)
        return result

    LedgerService._grant = grant_then_crash  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpserve_testkit.crash",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES, help="kill: SIGKILL itself; hang: block forever")
    parser.add_argument("target", choices=("operator", "ledger"),
                        help="operator: dpserve.cli; ledger: python -m dpserve.ledger")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the target's arguments")
    args = parser.parse_args(argv)
    install(args.mode)
    if args.target == "operator":
        from dpserve.cli import main as operator_main

        return operator_main(args.args)
    from dpserve.ledger.__main__ import main as ledger_main

    return ledger_main(args.args)


if __name__ == "__main__":
    raise SystemExit(main())
