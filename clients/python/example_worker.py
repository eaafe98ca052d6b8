#!/usr/bin/env python3
"""An example worker for an external queue of Master Orchestrator.

Each job's payload may carry a number `n`. The handler sleeps `--sleep-ms`,
then returns `{"n": n, "square": n * n}`. With `--fail-rate R`, the first
attempt of every (1 / R)-th job raises (R = 0.1: the jobs with
`n % 10 == 0`), so a test can predict which jobs are retried.

    python3 example_worker.py --url http://127.0.0.1:8080 --queue emails \\
        --concurrency 8 --batch 32 --fail-rate 0.1 --record /tmp/runs.txt

Stops on SIGTERM or SIGINT after finishing the jobs it holds, and prints a
one-line summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any, Dict, Optional, TextIO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from orchestrator_client import Client, Job, Worker  # noqa: E402


def fails_first_attempt(n: int, fail_rate: float) -> bool:
    """Whether job `n` fails its first attempt: every (1 / rate)-th `n`.

    With rate 0.1 that is `n % 10 == 0`; with 0.25, `n % 4 == 0`.
    """
    if fail_rate <= 0:
        return False
    return n % max(1, round(1 / fail_rate)) == 0


class Recorder:
    """Appends `<job id> <attempt>` per handler call to a file, flushed."""

    def __init__(self, path: Optional[str]) -> None:
        self._file: Optional[TextIO] = open(path, "a", buffering=1) if path else None
        self._lock = threading.Lock()

    def record(self, job: Job) -> None:
        if self._file is None:
            return
        with self._lock:
            self._file.write(f"{job.id} {job.attempt}\n")
            self._file.flush()


def make_handler(args: argparse.Namespace, recorder: Recorder):
    """The job handler the command line describes."""

    def handle(job: Job) -> Dict[str, Any]:
        n = int(job.payload.get("n", 0)) if isinstance(job.payload, dict) else 0
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
        recorder.record(job)
        if job.attempt == 1 and fails_first_attempt(n, args.fail_rate):
            raise RuntimeError(f"planned failure of n={n} on attempt 1")
        return {"n": n, "square": n * n}

    return handle


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORCH_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("ORCH_API_KEY"))
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="jobs leased per call")
    parser.add_argument("--lease-ms", type=int, default=30_000)
    parser.add_argument("--wait-ms", type=int, default=5_000, help="long-poll length")
    parser.add_argument("--name", help="worker name shown by the API")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of jobs whose first attempt raises")
    parser.add_argument("--sleep-ms", type=int, default=0, help="time each job takes")
    parser.add_argument("--record", help="append '<job id> <attempt>' per handler call to this file")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    client = Client(args.url, api_key=args.api_key)
    recorder = Recorder(args.record)
    worker = Worker(
        client,
        args.queue,
        make_handler(args, recorder),
        concurrency=args.concurrency,
        batch=args.batch,
        lease_ms=args.lease_ms,
        name=args.name,
        wait_ms=args.wait_ms,
    )
    stats = worker.run()
    print(f"worker {worker.name} queue={args.queue} {stats.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
