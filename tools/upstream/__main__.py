"""``python -m tools.upstream``: run the stand-in until SIGTERM or SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import tools.upstream
from tools.upstream.conditions import Conditions, parse_latency_flag
from tools.upstream.faults import parse_fault_spec
from tools.upstream.server import UpstreamServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=tools.upstream.__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--samples-dir", type=Path, default=None,
                        help="where sample photos are generated and reused "
                             "(default tools/.samples)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="sample size factor; 0.1 gives small, fast samples")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="JSON fault, @file.json, or mode,key=value,...; repeatable")
    parser.add_argument("--cache-mb", type=int, default=512)
    parser.add_argument("--latency", action="append", default=[], metavar="ENDPOINT=MS[:JITTER]",
                        help="wait before answering img or product (ms, ± uniform jitter); "
                             "repeatable; POST /_conditions changes it at run time")
    parser.add_argument("--bandwidth", type=int, default=None, metavar="BYTES_PER_S",
                        help="cap on the bytes per second of all responses together")
    parser.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                        help="answer at most N requests at once; the rest wait their turn")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        faults = [f for spec in args.fault for f in parse_fault_spec(spec)]
    except (ValueError, OSError) as exc:
        parser.error(f"--fault: {exc}")
    try:
        conditions = Conditions(dict(parse_latency_flag(flag) for flag in args.latency),
                                args.bandwidth, args.max_in_flight)
        Conditions.from_json(conditions.to_json())
    except ValueError as exc:
        parser.error(f"conditions: {exc}")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = UpstreamServer(args.host, args.port, args.samples_dir, scale=args.scale,
                            faults=faults, cache_bytes=args.cache_mb * 1024 * 1024,
                            conditions=conditions, verbose=args.verbose)
    server.start()
    print(f"READY {server.url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
