"""Reliability contract on a real server: worker crashes, overload and shutdown lose nothing."""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from shoal.experiments.server_process import scrape_metric

from .conftest import start_server, stop_server  # noqa: TID252

BODY_64 = json.dumps(
    {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": np.zeros(3 * 64 * 64).tolist()}], "parameters": {"slo_ms": 5000}}
)


def send(url, body=BODY_64, model="fixture.rf-64"):
    try:
        response = httpx.post(f"{url}/v2/models/{model}/infer", content=body, timeout=30)
        return response.status_code, response.headers.get("retry-after"), response.json()
    except httpx.HTTPError as error:  # a hang or reset would show up here
        return "transport", None, str(error)


def test_sigkilled_worker_is_restarted_and_no_request_is_lost(fixture_repository_path):
    server = start_server(fixture_repository_path, "--workers", "1")
    try:
        (worker_pid,) = server.worker_pids()
        results = []
        stop = threading.Event()

        def load():
            with ThreadPoolExecutor(8) as pool:
                while not stop.is_set():
                    results.extend(pool.map(lambda _: send(server.url), range(16)))

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.0)
        os.kill(worker_pid, signal.SIGKILL)
        time.sleep(1.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (server.worker_pids() and server.worker_pids() != [worker_pid] and httpx.get(f"{server.url}/v2/models/fixture.rf-64/ready").status_code == 200):
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "some request hung"
        statuses = [status for status, _, _ in results]
        assert "transport" not in statuses
        assert set(statuses) <= {200, 429, 500, 503}
        errors = [body["error"] for status, _, body in results if status == 500]
        assert all("exited" in error or "not running" in error for error in errors), errors[:3]
        new_pids = server.worker_pids()
        assert new_pids and worker_pid not in new_pids
        assert send(server.url)[0] == 200  # serving again after the restart
        assert "shoal_worker_restarts_total 1.0" in httpx.get(f"{server.url}/metrics").text
    finally:
        stop_server(server)


def binary_body(items, side=64):
    header = json.dumps(
        {"inputs": [{"name": "images", "shape": [items, 3, side, side], "datatype": "FP32", "parameters": {"binary_data_size": items * 3 * side * side * 4}}], "parameters": {"slo_ms": 5000}}
    ).encode()
    return header + np.random.default_rng(0).random((items, 3, side, side), dtype=np.float32).tobytes(), len(header)


def test_overload_is_shed_with_429_and_retry_after(fixture_repository_path):
    # A queue that holds one request of 16 items, drained one item per batch: concurrent
    # requests find it full and must be shed at once, not queued without bound.
    server = start_server(fixture_repository_path, "--queue-capacity", "16", "--max-batch-size", "1", "--threads", "1")
    body, header_length = binary_body(16)

    def post(_):
        response = httpx.post(
            f"{server.url}/v2/models/fixture.rf-64/infer", content=body, headers={"Inference-Header-Content-Length": str(header_length)}, timeout=30
        )
        return response.status_code, response.headers.get("retry-after")

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(post, range(160)))
        statuses = [status for status, _ in results]
        assert statuses.count(200) > 0 and statuses.count(429) > 0, statuses
        assert set(statuses) <= {200, 429}
        assert all(retry is not None and int(retry) >= 1 for status, retry in results if status == 429)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    finally:
        stop_server(server)


def test_graceful_shutdown_answers_in_flight_requests(fixture_repository_path):
    server = start_server(fixture_repository_path)
    results = []

    def burst():
        with ThreadPoolExecutor(16) as pool:
            results.extend(pool.map(lambda _: send(server.url), range(64)))

    thread = threading.Thread(target=burst)
    thread.start()
    time.sleep(0.3)
    output = stop_server(server)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(results) == 64
    # Each request was answered (result or error status) or refused at connect after the listener closed.
    for status, _, body in results:
        assert status in (200, 429, 500, 503) or ("transport" == status and "connect" in body.lower()), (status, body)
    assert server.process.returncode == 0, output


def test_a_killed_controller_comes_back_while_requests_are_answered(fixture_repository_path):
    server = start_server(fixture_repository_path, "--fault-injection", "--admin-token", "s3cret", "--control-interval-s", "0.1")
    try:
        assert httpx.post(f"{server.url}/v2/faults/controller/kill", timeout=10).status_code == 401
        assert httpx.post(f"{server.url}/v2/faults/nothing/kill", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 404
        statuses = [send(server.url)[0] for _ in range(5)]
        response = httpx.post(f"{server.url}/v2/faults/controller/kill", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert response.status_code == 202 and response.json() == {"killed": "controller", "restarts_before": 0}
        ticks_after_kill = scrape_metric(server.url, "shoal_controller_ticks_total")
        statuses += [send(server.url)[0] for _ in range(5)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and scrape_metric(server.url, "shoal_controller_ticks_total") < ticks_after_kill + 3:
            time.sleep(0.1)
        assert scrape_metric(server.url, "shoal_background_restarts_total", task="controller") == 1.0
        assert scrape_metric(server.url, "shoal_controller_ticks_total") >= ticks_after_kill + 3  # ticking again
        assert statuses == [200] * 10
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        log = stop_server(server)
    assert "background loop 'controller' ended (cancelled)" in log


def test_fault_injection_is_off_unless_asked_for(fixture_repository_path):
    server = start_server(fixture_repository_path)
    try:
        assert httpx.post(f"{server.url}/v2/faults/controller/kill", timeout=10).status_code == 404
    finally:
        stop_server(server)
