"""The real server built with ThreadSanitizer (scripts/sanitize.sh builds it into build-tsan/)
under a short gRPC load: the engine thread against the gRPC threads. Concurrent unary and
streaming requests, streams cancelled mid-way, expired deadlines, bad requests, metrics scrapes,
then a drain by SIGTERM. Fails if the server's log has a ThreadSanitizer report or it does not
exit cleanly. Skipped unless SPANSERVE_TSAN_BUILD_DIR names that build.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grpc
import pytest

import server_harness
from server_harness import REPO, ServerProcess, request

TSAN_BUILD = os.environ.get("SPANSERVE_TSAN_BUILD_DIR")
pytestmark = pytest.mark.skipif(not TSAN_BUILD,
                                reason="needs SPANSERVE_TSAN_BUILD_DIR (scripts/sanitize.sh)")


def _load(stub, worker: int, errors: list) -> None:
    """One client thread: a unary call, a whole stream, a stream cancelled after a few messages,
    a deadline that expires mid-generation, and a bad request, three times over."""
    try:
        for round_ in range(3):
            seed = worker * 10 + round_
            stub.Generate(request(max_tokens=6, seed=seed, temperature=0.7), timeout=120)
            list(stub.GenerateStream(request(max_tokens=6, seed=seed, return_spans=True),
                                     timeout=120))
            call = stub.GenerateStream(request(max_tokens=400, ignore_eos=True), timeout=120)
            for i, _ in enumerate(call):
                if i == 2:
                    call.cancel()
                    break
            with pytest.raises(grpc.RpcError) as error:
                stub.Generate(request(max_tokens=400, ignore_eos=True), timeout=0.3)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as error:
                stub.Generate(request(top_p=0.0), timeout=120)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_no_thread_sanitizer_report_under_concurrent_load(tmp_path, model_dir, monkeypatch):
    build = Path(TSAN_BUILD)
    build = build if build.is_absolute() else REPO / build
    monkeypatch.setattr(server_harness, "SERVER_BIN", build / "server" / "spanserve")
    monkeypatch.setenv("TSAN_OPTIONS", f"suppressions={REPO / 'tests/sanitizers/tsan.supp'}")
    server = ServerProcess(tmp_path, model_dir, {"debug.step_delay_ms": 2,
                                                 "server.drain_grace_seconds": 5})
    try:
        server.wait_serving(timeout=120)
        stub = server.stub()
        errors: list = []
        workers = [threading.Thread(target=_load, args=(stub, w, errors)) for w in range(4)]
        scraper_done = threading.Event()

        def scrape():
            while not scraper_done.wait(0.05):
                server.scrape()
        scraper = threading.Thread(target=scrape)
        for t in workers + [scraper]:
            t.start()
        for t in workers:
            t.join(timeout=300)
        scraper_done.set()
        scraper.join(timeout=30)
        assert not errors, errors
        # A drain with a stream in flight: the signal thread against the engine and gRPC.
        in_flight = stub.GenerateStream(request(max_tokens=50, ignore_eos=True), timeout=120)
        next(in_flight)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=120) == 0, server.log()[-5000:]
    finally:
        server.close()
    log = server.log()
    assert "WARNING: ThreadSanitizer" not in log, log[log.find("WARNING: ThreadSanitizer"):][:8000]
