"""``python -m dpserve_testkit.localkube``: serve the emulator on 127.0.0.1 until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading

from dpserve_testkit.localkube.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dpserve_testkit.localkube",
                                     description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--kubeconfig", default="localkube.kubeconfig",
                        help="where to write the kubeconfig (default: ./localkube.kubeconfig)")
    parser.add_argument("--simulate-deployments", action="store_true",
                        help="mark Deployments available as a kubelet would (no pods run)")
    args = parser.parse_args()
    server = serve(args.port, kubeconfig=args.kubeconfig)
    if args.simulate_deployments:
        server.start_simulator()
    print(f"localkube serving {server.url}; KUBECONFIG={server.kubeconfig}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
