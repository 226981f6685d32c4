"""The real server built with ThreadSanitizer (scripts/sanitize.sh builds it into build-tsan/)
under a short gRPC load: the engine thread against the gRPC threads. Concurrent unary and
streaming requests, streams cancelled mid-way, expired deadlines, bad requests, metrics scrapes,
then a drain by SIGTERM. Fails if the server does not exit cleanly or its log has a
ThreadSanitizer report whose two accesses are both outside gRPC and protobuf (the server's own
code racing with itself, on any of its threads). Debian's gRPC is not instrumented: the locks
inside it that order a message handed to it and its later use are invisible, so races with an
access in gRPC or protobuf code are counted, not failed. Skipped unless SPANSERVE_TSAN_BUILD_DIR
names that build.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import threading
from pathlib import Path

import grpc
import pytest

import server_harness
from server_harness import REPO, ServerProcess, request

TSAN_BUILD = os.environ.get("SPANSERVE_TSAN_BUILD_DIR")
needs_tsan_build = pytest.mark.skipif(not TSAN_BUILD,
                                      reason="needs SPANSERVE_TSAN_BUILD_DIR (scripts/sanitize.sh)")


# Code whose accesses are ordered by gRPC's uninstrumented locks: gRPC's and protobuf's headers,
# libraries and the generated messages.
GRPC_CODE = re.compile(r"grpc|google::protobuf|/google/protobuf/|spanserve::v1::|\.pb\.(cc|h):"
                       r"|libgpr|libabsl|libprotobuf")
# Frames that belong to whoever called them: the standard library and the runtime's interceptors.
PASS_THROUGH = re.compile(r"/include/c\+\+/|std::|^operator (new|delete)|^(memcpy|memmove|memset"
                          r"|free|malloc) ")
ACCESS = re.compile(r"\s+(Read|Write|Previous read|Previous write|Atomic read|Atomic write)"
                    r".* by (main )?thread")


def _first_frame_of_its_own(stack: list[str]) -> str:
    for line in stack:
        frame = re.match(r"\s*#\d+ (.*)", line)
        if frame and not PASS_THROUGH.search(frame.group(1)):
            return frame.group(1)
    return "?"


def races_outside_grpc(log: str) -> tuple[list[str], int]:
    """The ThreadSanitizer reports of a log whose two accesses are both outside gRPC and
    protobuf code, and the number of those with an access inside it."""
    own, in_grpc = [], 0
    for report in log.split("WARNING: ThreadSanitizer:")[1:]:
        stacks: list[list[str]] = []
        for line in report.splitlines()[1:]:
            if ACCESS.match(line):
                stacks.append([])
            elif not line.startswith("    #"):
                if stacks and stacks[-1]:
                    stacks.append(None)
            elif stacks and stacks[-1] is not None:
                stacks[-1].append(line)
        accesses = [_first_frame_of_its_own(s) for s in stacks if s][:2]
        if any(GRPC_CODE.search(frame) for frame in accesses):
            in_grpc += 1
        else:
            own.append(report[:4000])
    return own, in_grpc


def test_races_outside_grpc_keeps_the_servers_own_races():
    own_race = """ data race (pid=1)
  Write of size 8 at 0x7b04 by thread T3:
    #0 memcpy <null> (spanserve+0x1)
    #1 std::vector<int>::push_back(int) /usr/include/c++/12/bits/stl_vector.h:1 (spanserve+0x2)
    #2 spanserve::GenerateCall::OnEvent() /work/main/server/service.cc:189:5 (spanserve+0x3)

  Previous read of size 8 at 0x7b04 by thread T8:
    #0 spanserve::GenerateCall::OnCancel() /work/main/server/service.cc:150:5 (spanserve+0x4)
    #1 <null> <null> (libgrpc++.so.1.51+0x897ba)

  Thread T3 (tid=2, running) created by main thread at:
    #0 pthread_create <null> (spanserve+0x5)
"""
    handed_to_grpc = own_race.replace("spanserve::GenerateCall::OnCancel() /work/main/server/"
                                      "service.cc:150:5",
                                      "grpc::internal::CallOpSet<>::FinalizeResult() /usr/include/"
                                      "grpcpp/impl/call_op_set.h:909:9")
    log = "\n".join("WARNING: ThreadSanitizer:" + r for r in (own_race, handed_to_grpc))
    own, in_grpc = races_outside_grpc(log)
    assert len(own) == 1 and "OnCancel" in own[0] and in_grpc == 1


def _signal_our_threads(pid: int, sig: int) -> None:
    """Sends sig to each of the server's own threads (those not named by gRPC), not the process.
    Under ThreadSanitizer a signal is run only when its thread next enters the runtime: one that
    lands on a gRPC thread asleep in a raw futex, or on the main thread in its read() on the
    signal pipe (SA_RESTART restarts it), may wait forever. Threads asleep in pthread_cond_wait
    (the engine's, the HTTP pools') run it at once; its one write() wakes the main thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234  # x86-64
    name = Path(f"/proc/{pid}/comm").read_text()
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        if tid != pid and (task / "comm").read_text() == name:
            if libc.syscall(sys_tgkill, pid, tid, sig) != 0:
                raise OSError(ctypes.get_errno(), f"tgkill {tid}")


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


@needs_tsan_build
def test_no_thread_sanitizer_report_under_concurrent_load(tmp_path, model_dir, monkeypatch):
    build = Path(TSAN_BUILD)
    build = build if build.is_absolute() else REPO / build
    monkeypatch.setattr(server_harness, "SERVER_BIN", build / "server" / "spanserve")
    # Debian's gRPC and Abseil are not instrumented: their own locks (futexes) are invisible, so
    # the memory calls they make (memcpy, free, sendmsg) would race by the hundred. Those are
    # ignored; the server's own code and every lock taken through pthreads stay checked. The
    # reports left decide (races_outside_grpc), so the exit status is the server's own.
    monkeypatch.setenv("TSAN_OPTIONS", f"suppressions={REPO / 'tests/sanitizers/tsan.supp'} "
                                       "ignore_noninstrumented_modules=1 exitcode=0")
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
        _signal_our_threads(server.proc.pid, signal.SIGTERM)
        assert server.wait_exit(timeout=120) == 0, server.log()[-5000:]
    finally:
        server.close()
    own, in_grpc = races_outside_grpc(server.log())
    print(f"ThreadSanitizer: {len(own)} reports outside gRPC, {in_grpc} with an access in it")
    assert not own, "\n".join(own[:3])
