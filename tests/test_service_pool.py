"""Each service runs its blocking calls in a pool of its own (http_service.blocking): services that share a
process cannot starve each other of threads."""
from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from semper.client.support.http_service import POOL_THREADS, ServiceRunner, blocking, json_response, make_app


def _app(gate: threading.Event | None, entered: threading.Semaphore | None = None) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/work")
    async def work(request: web.Request) -> web.Response:
        def step() -> str:
            if entered is not None:
                entered.release()
            if gate is not None and not gate.wait(20):
                return "gave up"
            return threading.current_thread().name
        return json_response({"thread": await blocking(step)})
    return make_app(list(routes))


def _post(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url + "/work", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def test_a_service_whose_threads_all_wait_does_not_stall_another_in_the_same_process() -> None:
    gate, entered = threading.Event(), threading.Semaphore(0)
    with ServiceRunner(_app(gate, entered)) as stuck, ServiceRunner(_app(None)) as free, \
            ThreadPoolExecutor(max_workers=12) as clients:
        waiting = [clients.submit(_post, stuck.url, 30) for _ in range(12)]   # more than any pool has threads
        try:
            for _ in range(POOL_THREADS):           # the stuck service's threads are all taken ...
                assert entered.acquire(timeout=10)
            time.sleep(0.5)                         # ... and any other thread they could take, too
            answer = _post(free.url, 5)            # on one pool for the process this waited behind them all
        finally:
            gate.set()
        assert b"semper-svc" in answer
        assert all(b"semper-svc" in f.result(timeout=30) for f in waiting)  # the stuck ones finish once let go


def test_a_service_runs_at_most_its_pools_threads_of_blocking_calls_at_once() -> None:
    gate, entered = threading.Event(), threading.Semaphore(0)
    with ServiceRunner(_app(gate, entered)) as svc, ThreadPoolExecutor(max_workers=2 * POOL_THREADS) as clients:
        calls = [clients.submit(_post, svc.url, 30) for _ in range(2 * POOL_THREADS)]
        try:
            for _ in range(POOL_THREADS):
                assert entered.acquire(timeout=10)
            assert not entered.acquire(timeout=0.5), "more blocking calls ran at once than the pool has threads"
        finally:
            gate.set()
        names = {f.result(timeout=30) for f in calls}
    assert len(names) == POOL_THREADS
