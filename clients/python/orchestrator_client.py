"""Client and worker runner for Master Orchestrator's external queues.

One file, Python 3.9+ standard library only: copy it next to your code.

    from orchestrator_client import Client, Worker, Permanent

    client = Client("http://127.0.0.1:8080", api_key=None)
    client.create_queue("emails", max_attempts=3, backoff_ms=1000)
    client.push("emails", {"to": "a@example.com"})

    def send(job):
        if not job.payload.get("to"):
            raise Permanent("no recipient")      # dead at once, no retry
        job.progress(0.5, "rendering")
        return {"sent": True}                     # stored as the job's result

    Worker(client, "emails", send, concurrency=8, batch=32).run()

`Client` keeps one persistent HTTP connection per thread. `Worker` leases
jobs in batches with long-polling, runs the handler on a pool of threads,
renews leases while jobs run, acks results, reports failures, and on
SIGTERM or SIGINT finishes the jobs it holds before returning.
"""

from __future__ import annotations

import http.client
import json
import os
import queue as queue_module
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

__all__ = [
    "Client",
    "Job",
    "LeaseLost",
    "OrchestratorError",
    "Permanent",
    "RetryAfter",
    "Worker",
    "WorkerStats",
]

#: Most jobs one batch push carries (the API's limit).
MAX_BATCH_PUSH = 10_000
#: Most jobs one lease call hands out (the API's limit).
MAX_LEASE = 1_000
#: Longest error message the API keeps, in bytes.
MAX_ERROR_BYTES = 4 * 1024

# Errors that mean a kept-alive connection was closed by the server while
# idle: the request never reached it, so it is safe to send again.
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class OrchestratorError(Exception):
    """An error answer from the API (or a transport failure, status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class LeaseLost(OrchestratorError):
    """409: this lease no longer holds the job.

    `code` is `lease_lost` (the lease expired, was taken over, or the job
    ended) or `job_cancelled` (someone cancelled the job). Either way, stop
    working on the job: its outcome can no longer be reported.
    """


class Permanent(Exception):
    """Raise from a handler when no retry can help: the job is dead at once."""


class RetryAfter(Exception):
    """Raise from a handler to retry after `after_ms` instead of the backoff."""

    def __init__(self, message: str, after_ms: int) -> None:
        super().__init__(message)
        self.after_ms = after_ms


JobRef = Union["Job", Mapping[str, Any]]


def _ref(job: JobRef) -> "tuple[str, str]":
    """The id and lease token of a `Job` or of a leased job's dict."""
    if isinstance(job, Job):
        return job.id, job.lease_token
    return str(job["id"]), str(job["lease_token"])


class Client:
    """HTTP client of the orchestrator's job API.

    Thread-safe: each thread uses a persistent connection of its own.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self._local = threading.local()

    # -- jobs ---------------------------------------------------------------

    def push(self, queue: str, payload: Any, **opts: Any) -> str:
        """Pushes one job; returns its id.

        `opts` are the push options of `POST /api/v1/jobs`: `priority`,
        `max_attempts`, `idempotency_key`, `delay_ms`, `concurrency_key`,
        `callback_url`.
        """
        body = {"queue": queue, "payload": payload, **opts}
        return self.request("POST", "/api/v1/jobs", body)["id"]

    def push_batch(self, queue: str, payloads: Iterable[Any], **opts: Any) -> List[str]:
        """Pushes many jobs (10,000 per request); returns their ids in order."""
        ids: List[str] = []
        chunk: List[Dict[str, Any]] = []
        for payload in payloads:
            chunk.append({"queue": queue, "payload": payload, **opts})
            if len(chunk) == MAX_BATCH_PUSH:
                ids += self._push_chunk(chunk)
                chunk = []
        if chunk:
            ids += self._push_chunk(chunk)
        return ids

    def _push_chunk(self, jobs: List[Dict[str, Any]]) -> List[str]:
        return self.request("POST", "/api/v1/jobs/batch", {"jobs": jobs})["ids"]

    def job(self, id: str) -> Dict[str, Any]:
        """A job's status, attempts, result or error, progress and logs."""
        return self.request("GET", f"/api/v1/jobs/{_quote(id)}")

    def cancel(self, id: str) -> Dict[str, Any]:
        """Cancels a job; a running one's worker hears of it at its next call."""
        return self.request("POST", f"/api/v1/jobs/{_quote(id)}/cancel", {})

    # -- queues -------------------------------------------------------------

    def create_queue(self, name: str, handler: str = "external", **settings: Any) -> Dict[str, Any]:
        """Creates a queue (`max_attempts`, `backoff_ms`, ... as keywords)."""
        return self.request("POST", "/api/v1/queues", {"name": name, "handler": handler, **settings})

    def queues(self) -> List[Dict[str, Any]]:
        """Every queue with its settings and counts."""
        return self.request("GET", "/api/v1/queues")["queues"]

    def queue(self, name: str) -> Dict[str, Any]:
        """One queue's settings and counts."""
        for found in self.queues():
            if found["name"] == name:
                return found
        raise OrchestratorError(404, "queue_not_found", f"no queue {name!r}")

    # -- leases -------------------------------------------------------------

    def lease(
        self,
        queue: str,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int = 30_000,
        worker: Optional[str] = None,
    ) -> List["Job"]:
        """Leases up to `max` jobs, waiting up to `wait_ms` when none is ready."""
        body: Dict[str, Any] = {"max": max, "wait_ms": wait_ms, "lease_ms": lease_ms}
        if worker is not None:
            body["worker"] = worker
        started = time.monotonic()
        answer = self.request(
            "POST",
            f"/api/v1/queues/{_quote(queue)}/lease",
            body,
            timeout=self.timeout + wait_ms / 1000,
        )
        # The lease started at the latest when the call was sent.
        deadline = started + lease_ms / 1000
        return [Job(self, queue, view, lease_ms, deadline) for view in answer["jobs"]]

    def heartbeat(self, job: JobRef, lease_ms: Optional[int] = None) -> int:
        """Renews a lease; returns its new expiry (epoch ms)."""
        id, token = _ref(job)
        body: Dict[str, Any] = {"lease_token": token}
        if lease_ms is not None:
            body["lease_ms"] = lease_ms
        sent = time.monotonic()
        expires = self.request("POST", f"/api/v1/jobs/{_quote(id)}/heartbeat", body)["lease_expires_at_ms"]
        if isinstance(job, Job):
            job._renewed(expires, sent, lease_ms or 30_000)
        return expires

    def ack(self, job: JobRef, result: Any = None) -> str:
        """Ends an attempt successfully with `result`; returns `done`."""
        id, token = _ref(job)
        body = {"lease_token": token, "result": result}
        return self.request("POST", f"/api/v1/jobs/{_quote(id)}/ack", body)["status"]

    def fail(
        self,
        job: JobRef,
        error: str,
        retryable: bool = True,
        retry_after_ms: Optional[int] = None,
    ) -> str:
        """Ends an attempt with a failure; returns `failed` (retry due) or `dead`."""
        id, token = _ref(job)
        body: Dict[str, Any] = {"lease_token": token, "error": _clip(error), "retryable": retryable}
        if retry_after_ms is not None:
            body["retry_after_ms"] = retry_after_ms
        return self.request("POST", f"/api/v1/jobs/{_quote(id)}/fail", body)["status"]

    def progress(
        self,
        job: JobRef,
        fraction: Optional[float],
        message: str = "",
        logs: Iterable[str] = (),
    ) -> None:
        """Reports progress (0 to 1, or None to leave it) and appends log lines."""
        id, token = _ref(job)
        body: Dict[str, Any] = {"lease_token": token, "message": message, "logs": list(logs)}
        if fraction is not None:
            body["progress"] = fraction
        self.request("POST", f"/api/v1/jobs/{_quote(id)}/progress", body)

    # -- transport ----------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        """Sends one request; returns the decoded JSON answer (None for 204).

        Raises `LeaseLost` for 409 answers of the lease routes' kind,
        `OrchestratorError` for every other error answer, and
        `OrchestratorError` with status 0 when the API cannot be reached.
        """
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                _set_timeout(connection, timeout or self.timeout)
                connection.request(method, self._prefix + path, body=data, headers=self._headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except _STALE_CONNECTION as err:
                self._drop_connection()
                if not reused or attempt == 2:
                    raise OrchestratorError(0, "unreachable", f"{method} {path}: {err!r}") from err
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                raise OrchestratorError(0, "unreachable", f"{method} {path}: {err!r}") from err
        if response.will_close:
            self._drop_connection()
        return _decode(response.status, raw)

    def _connection(self) -> "tuple[http.client.HTTPConnection, bool]":
        """This thread's connection and whether it served a request before."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.timeout)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.connection = connection
        return connection, False

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def close(self) -> None:
        """Closes this thread's connection (others close when their thread ends)."""
        self._drop_connection()


def _set_timeout(connection: http.client.HTTPConnection, seconds: float) -> None:
    connection.timeout = seconds
    if connection.sock is not None:
        connection.sock.settimeout(seconds)


def _decode(status: int, raw: bytes) -> Any:
    """The JSON body of a success; raises the error an error answer names."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    if status < 400:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    else:
        code, message = "http_error", str(body)[:500]
    kind = LeaseLost if status == 409 and code in ("lease_lost", "job_cancelled") else OrchestratorError
    raise kind(status, code, message)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _clip(text: str, limit: int = MAX_ERROR_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


class Job:
    """A leased job: its payload plus the lease that lets a worker report on it."""

    def __init__(self, client: Client, queue: str, view: Mapping[str, Any], lease_ms: int, deadline: float) -> None:
        self.client = client
        self.queue = queue
        self.id: str = view["id"]
        self.payload: Any = view["payload"]
        self.attempt: int = view["attempt"]
        self.max_attempts: int = view["max_attempts"]
        self.lease_token: str = view["lease_token"]
        self.lease_expires_at_ms: int = view["lease_expires_at_ms"]
        self.concurrency_key: Optional[str] = view.get("concurrency_key")
        self.lease_ms = lease_ms
        #: Local monotonic time by which the lease has surely expired.
        self.deadline = deadline
        #: Set when the API said the lease is gone (`lease_lost` or `job_cancelled`).
        self.lost_code: Optional[str] = None

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled: the handler should stop early."""
        return self.lost_code == "job_cancelled"

    @property
    def lost(self) -> bool:
        """True once this lease no longer holds the job (for any reason)."""
        return self.lost_code is not None

    def progress(self, fraction: Optional[float], message: str = "", logs: Iterable[str] = ()) -> bool:
        """Reports progress; False (and `lost` set) when the lease is gone."""
        return self._report(fraction, message, logs)

    def log(self, *lines: str) -> bool:
        """Appends lines to the job's log; False when the lease is gone."""
        return self._report(None, "", lines)

    def heartbeat(self) -> bool:
        """Renews the lease; False (and `lost` set) when it is gone."""
        try:
            self.client.heartbeat(self, self.lease_ms)
            return True
        except LeaseLost as err:
            self.lost_code = err.code
            return False

    def _report(self, fraction: Optional[float], message: str, logs: Iterable[str]) -> bool:
        try:
            self.client.progress(self, fraction, message, logs)
            return True
        except LeaseLost as err:
            self.lost_code = err.code
            return False

    def _renewed(self, expires_at_ms: int, sent: float, lease_ms: int) -> None:
        self.lease_expires_at_ms = expires_at_ms
        self.deadline = sent + lease_ms / 1000

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, queue={self.queue!r}, attempt={self.attempt})"


@dataclass
class WorkerStats:
    """What a worker did, by outcome."""

    leased: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    lost: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return (
            f"leased={self.leased} done={self.done} failed={self.failed} dead={self.dead} "
            f"lost={self.lost} errors={self.errors} seconds={seconds:.1f} "
            f"done_per_s={self.done / seconds:.1f}"
        )


Handler = Callable[[Job], Any]
_STOP = object()


class Worker:
    """Runs `handler(job)` for the jobs of one external queue.

    Up to `concurrency` handlers run at once, each on a thread of its own.
    Jobs are leased `batch` at a time (long-polling while the queue is
    empty), so up to `concurrency + batch` jobs are held at once; a
    heartbeat thread renews every held lease before it runs out.

    The handler's return value is the job's result (it must be JSON). An
    exception fails the attempt with its message: `Permanent` makes the job
    dead at once, `RetryAfter` sets the retry delay, anything else is
    retried after the queue's backoff while attempts remain.
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        handler: Handler,
        concurrency: int = 4,
        batch: Optional[int] = None,
        lease_ms: int = 30_000,
        name: Optional[str] = None,
        wait_ms: int = 5_000,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.batch = max(1, min(batch or concurrency, MAX_LEASE))
        self.lease_ms = lease_ms
        self.wait_ms = wait_ms
        self.name = name or default_worker_name()
        self.stats = WorkerStats()
        self._ready: "queue_module.Queue[Any]" = queue_module.Queue()
        self._held: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._finished = threading.Event()

    # -- running ------------------------------------------------------------

    def run(self, handle_signals: bool = True) -> WorkerStats:
        """Works until `stop()` (or SIGTERM/SIGINT); returns the stats.

        Jobs already leased are finished before it returns, including those
        of a lease call under way when it was told to stop (that call
        returns within `wait_ms`).
        """
        if handle_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        threads = [self._thread(self._execute, f"run-{i}") for i in range(self.concurrency)]
        threads.append(self._thread(self._renew, "heartbeat"))
        try:
            self._lease_loop()
        finally:
            for _ in range(self.concurrency):
                self._ready.put(_STOP)
            for thread in threads[:-1]:
                thread.join()
            self._finished.set()
            threads[-1].join()
        return self.stats

    def stop(self) -> None:
        """Asks the worker to lease no more jobs and return once idle."""
        self._stopping.set()
        with self._room:
            self._room.notify_all()

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
        thread.start()
        return thread

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            # A second signal ends the process the default way. stop() takes
            # locks the interrupted code may hold: call it from a thread.
            signal.signal(signum, signal.SIG_DFL)
            threading.Thread(target=self.stop, daemon=True).start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    # -- leasing ------------------------------------------------------------

    def _lease_loop(self) -> None:
        capacity = self.concurrency + self.batch
        while not self._stopping.is_set():
            want = self._wait_for_room(capacity)
            if want == 0:
                continue
            try:
                jobs = self.client.lease(
                    self.queue, max=want, wait_ms=self.wait_ms, lease_ms=self.lease_ms, worker=self.name
                )
            except OrchestratorError as err:
                self._pause_after_error("lease", err)
                continue
            self._hold(jobs)

    def _wait_for_room(self, capacity: int) -> int:
        """How many jobs to lease next, once enough of the held ones ended."""
        threshold = max(1, self.batch // 2)
        with self._room:
            while capacity - len(self._held) < threshold and not self._stopping.is_set():
                self._room.wait(timeout=1.0)
            if self._stopping.is_set():
                return 0
            return min(capacity - len(self._held), MAX_LEASE)

    def _hold(self, jobs: List[Job]) -> None:
        with self._lock:
            for job in jobs:
                self._held[job.id] = job
            self.stats.leased += len(jobs)
        for job in jobs:
            self._ready.put(job)

    def _release(self, job: Job) -> None:
        with self._room:
            self._held.pop(job.id, None)
            self._room.notify_all()

    def _pause_after_error(self, what: str, err: OrchestratorError) -> None:
        self._report_error(what, err)
        self._stopping.wait(1.0)

    def _report_error(self, what: str, err: OrchestratorError) -> None:
        self._count("errors")
        print(f"orchestrator worker {self.name}: {what} failed: {err}", file=sys.stderr, flush=True)

    # -- executing ----------------------------------------------------------

    def _execute(self) -> None:
        while True:
            job = self._ready.get()
            if job is _STOP:
                return
            try:
                self._run_one(job)
            finally:
                self._release(job)

    def _run_one(self, job: Job) -> None:
        if job.lost:
            self._count("lost")
            return
        try:
            result = self.handler(job)
        except Exception as err:  # noqa: BLE001 - any handler error fails the attempt
            self._end(job, self.client.fail, job, *_failure(err))
        else:
            try:
                self._end(job, self.client.ack, job, result)
            except (TypeError, ValueError) as err:
                message = f"the handler's result is not JSON: {err}"
                self._end(job, self.client.fail, job, message, False, None)

    def _end(self, job: Job, report: Callable[..., str], *args: Any) -> None:
        """Sends an attempt's outcome, retrying transport errors while the lease lasts."""
        while True:
            try:
                self._count(report(*args))
                return
            except LeaseLost as err:
                job.lost_code = err.code
                self._count("lost")
                return
            except OrchestratorError as err:
                if err.status not in (0, 502, 503, 504) or time.monotonic() > job.deadline:
                    self._report_error(f"reporting job {job.id}", err)
                    return
                time.sleep(0.2)

    def _count(self, outcome: str) -> None:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    # -- renewing -----------------------------------------------------------

    def _renew(self) -> None:
        """Renews each held lease once half of it has passed."""
        tick = min(1.0, self.lease_ms / 4000)
        while not self._finished.wait(tick):
            with self._lock:
                held = list(self._held.values())
            now = time.monotonic()
            for job in held:
                if not job.lost and job.deadline - now < self.lease_ms / 2000:
                    self._renew_one(job)

    def _renew_one(self, job: Job) -> None:
        try:
            job.heartbeat()
        except OrchestratorError as err:
            if err.status == 404:
                job.lost_code = "lease_lost"
            else:
                self._report_error(f"heartbeat of job {job.id}", err)


def _failure(err: Exception) -> "tuple[str, bool, Optional[int]]":
    """How a handler's exception ends the attempt: message, retryable, delay."""
    if isinstance(err, Permanent):
        return _message(err), False, None
    if isinstance(err, RetryAfter):
        return _message(err), True, err.after_ms
    return _message(err), True, None


def _message(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def default_worker_name() -> str:
    """`<host>-<pid>`, cut to the characters and length the API accepts."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[-64:]
