"""``cem.processes.ServiceProcess`` against real tiny children (``python -c``): the LISTENING line over a
real socket, early exits and silence turned into clear errors, stopping, and no handle left open."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from polling import wait_for

from cem.errors import ServiceStartError
from cem.processes import ServiceProcess

# Binds a real socket on port 0, prints a line before LISTENING (as cem-tap's METRICS), then serves until
# SIGTERM, on which it prints its last stdout line (as cem-tap's --json counters) and exits 0.
SERVER = """
import signal, socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
def stop(signum, frame):
    print('{"stopped": true}', flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("METRICS 127.0.0.1:9", flush=True)
print("binding done", file=sys.stderr, flush=True)
time.sleep(0.3)
print(f"LISTENING 127.0.0.1:{sock.getsockname()[1]}", flush=True)
while True:
    conn, _ = sock.accept()
    conn.sendall(b"hello")
    conn.close()
"""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def open_fds() -> dict[str, str]:
    """This process's open descriptors and what each points at (a file, a pipe, a socket)."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing, e.g. the listing's own descriptor
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return fds


def opened_since(before: dict[str, str]) -> dict[str, str]:
    """Descriptors open now that were not open, to the same thing, before: what a leak leaves behind.

    Descriptors that other threads of the test process closed meanwhile (a previous test's background
    threads finishing) are not a leak, so the check is not an equality of the two listings.
    """
    return {fd: target for fd, target in open_fds().items() if before.get(fd) != target}


def pid_in_log(log: Path) -> int:
    return int(next(line.split()[1] for line in log.read_text().splitlines() if line.startswith("pid ")))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not reaped by its parent yet) counts as gone
        return stat.read().split(") ", 1)[1][0] == "Z"


def test_start_reads_the_address_keeps_stdout_and_terminates_gracefully(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    service = ServiceProcess.start(python(SERVER), log_path=log, name="tiny", timeout_s=30)
    try:
        assert service.host == "127.0.0.1" and service.address == f"127.0.0.1:{service.port}" and service.port > 0
        assert service.running and service.returncode is None and service.name == "tiny"
        with socket.create_connection((service.host, service.port), timeout=10) as conn:
            assert conn.recv(5) == b"hello"
        assert service.stdout_lines() == ["METRICS 127.0.0.1:9", f"LISTENING {service.address}"]
        assert "binding done" in service.log_text() and service.log_tail(1) == "binding done"
    finally:
        code = service.terminate(grace_s=10)
    assert code == 0 and not service.running
    assert service.stdout_lines()[-1] == '{"stopped": true}'  # printed during shutdown, read before terminate returned


def test_a_child_that_exits_first_is_an_error_with_the_log_tail_without_waiting_for_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    with pytest.raises(ServiceStartError) as error:
        ServiceProcess.start(python("""
            import sys
            print("loading the bundle", file=sys.stderr)
            sys.exit("error: expected a bundle folder, got /nowhere")
        """), log_path=log, name="bad", timeout_s=3600)
    message = str(error.value)
    # the exit, not the timeout (that message says "within 3600 s"), ended the wait; pytest's timeout is 600 s
    assert message.startswith("expected bad to print 'LISTENING HOST:PORT'; it exited with code 1 first")
    assert str(log) in message and "error: expected a bundle folder, got /nowhere" in message


def test_silence_past_the_timeout_kills_the_child(tmp_path: Path) -> None:
    log = tmp_path / "silent.log"
    with pytest.raises(ServiceStartError, match=r"within 0\.5 s; it printed none and was killed") as error:
        ServiceProcess.start(python("""
            import os, sys, time
            print("pid", os.getpid(), file=sys.stderr, flush=True)
            print("not the line", flush=True)
            time.sleep(120)
        """), log_path=log, timeout_s=0.5)
    assert "pid " in str(error.value)  # the log tail
    assert gone(pid_in_log(log))


def test_closing_stdout_before_the_line_is_an_error_and_the_child_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "closed.log"
    with pytest.raises(ServiceStartError, match="it closed its stdout first and was killed"):
        ServiceProcess.start(python("""
            import os, sys, time
            print("pid", os.getpid(), file=sys.stderr, flush=True)
            os.close(1)
            time.sleep(120)
        """), log_path=log, timeout_s=60)
    assert gone(pid_in_log(log))


def test_a_line_written_in_pieces_is_read_whole_and_an_ipv6_host_keeps_its_brackets() -> None:
    service = ServiceProcess.start(python("""
        import sys, time
        sys.stdout.write("LISTENING [::1]"); sys.stdout.flush()
        time.sleep(0.3)
        sys.stdout.write(":50051\\n"); sys.stdout.flush()
        time.sleep(120)
    """), timeout_s=30)
    try:
        assert (service.host, service.port, service.address) == ("[::1]", 50051, "[::1]:50051")
        assert service.log_path is None and service.log_text() == ""
    finally:
        assert service.kill() == -signal.SIGKILL


def test_sigterm_ignored_is_followed_by_sigkill_after_the_grace_period(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    service = ServiceProcess.start(python("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("LISTENING 127.0.0.1:1", flush=True)
        time.sleep(120)
    """), log_path=tmp_path / "stubborn.log", timeout_s=30)
    with caplog.at_level(logging.WARNING, logger="cem.processes"):
        assert service.terminate(grace_s=0.5) == -signal.SIGKILL  # SIGTERM alone did not end it
    assert "ignored SIGTERM for 0.5 s; killing it" in caplog.text


def test_a_new_session_is_killed_as_a_group_and_ctrl_c_does_not_reach_it(tmp_path: Path) -> None:
    log = tmp_path / "group.log"
    service = ServiceProcess.start(python("""
        import subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL)
        print("pid", worker.pid, file=sys.stderr, flush=True)
        print("LISTENING 127.0.0.1:2", flush=True)
        time.sleep(120)
    """), log_path=log, new_session=True, timeout_s=30)
    worker = pid_in_log(log)
    assert os.getpgid(service.pid) == service.pid == os.getpgid(worker) != os.getpgid(0)
    assert os.getsid(service.pid) == service.pid
    service.kill()
    wait_for(lambda: gone(worker), 30, f"worker {worker} to die with its group")


def test_context_manager_terminates_and_no_handle_is_left_open(tmp_path: Path) -> None:
    before = open_fds()
    with ServiceProcess.start(python(SERVER), log_path=tmp_path / "server.log", timeout_s=30) as service:
        assert service.running
    assert service.returncode == 0
    with pytest.raises(ServiceStartError):
        ServiceProcess.start(python("raise SystemExit(2)"), log_path=tmp_path / "bad.log", timeout_s=30)
    assert not opened_since(before)


def test_wait_returns_the_exit_code_and_the_name_defaults_to_the_module_or_program(tmp_path: Path) -> None:
    service = ServiceProcess.start([sys.executable, "-c", "print('LISTENING 127.0.0.1:3'); print('done')"],
                                   log_path=tmp_path / "quick.log", timeout_s=30)
    assert service.wait(30) == 0 and service.stdout_lines() == ["LISTENING 127.0.0.1:3", "done"]
    assert service.name == Path(sys.executable).name
    with pytest.raises(ServiceStartError, match=r"^expected json\.tool to print"):
        ServiceProcess.start([sys.executable, "-m", "json.tool", "/nonexistent"], log_path=tmp_path / "m.log")


def test_wait_does_not_hang_on_a_worker_that_still_holds_stdout(tmp_path: Path) -> None:
    """A worker left behind keeps the stdout pipe open: the end of file never comes, the exit still counts."""
    log = tmp_path / "orphan.log"
    service = ServiceProcess.start(python("""
        import subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # inherits stdout
        print("pid", worker.pid, file=sys.stderr, flush=True)
        print("LISTENING 127.0.0.1:4", flush=True)
        time.sleep(120)
    """), log_path=log, new_session=True, timeout_s=30)
    worker = pid_in_log(log)
    service.send_signal(signal.SIGKILL)  # the service alone
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(service.wait(30)), daemon=True)
    waiter.start()
    waiter.join(60)  # a hang detector only: the end of file that wait() must not need never comes
    assert not gone(worker)  # the worker still holds stdout ...
    assert codes == [-signal.SIGKILL] and not waiter.is_alive()  # ... and the exit was noticed all the same
    service.kill()  # the rest of its group
    wait_for(lambda: gone(worker), 30, f"worker {worker} to die with its group")


def test_without_a_pidfd_the_exit_is_noticed_by_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cem.processes._open_pidfd", lambda pid: None)  # as on a platform without pidfd_open
    test_wait_does_not_hang_on_a_worker_that_still_holds_stdout(tmp_path)
    with pytest.raises(ServiceStartError, match="exited with code 1 first"):
        ServiceProcess.start(python("raise SystemExit('no')"), log_path=tmp_path / "bad.log", timeout_s=30)
