"""The dev cluster's process, port and state-folder logic, without the real control plane: stale state from a
killed run is cleaned, pids the kernel reused are left alone, a failing component is named with its log."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorasweep_operator.devcluster import binaries
from lorasweep_operator.devcluster import cluster as devcluster
from lorasweep_operator.devcluster.cluster import ClusterState, ProcessRecord


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sleeper(started: list[subprocess.Popen[bytes]], ignore_term: bool = False) -> subprocess.Popen[bytes]:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(300)\n"
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its signal handler is in place
    started.append(process)
    return process


def gone(process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_free_ports_are_distinct_and_free() -> None:
    ports = devcluster.free_ports(6)
    assert len(set(ports)) == 6
    assert not any(devcluster.port_in_use(p) for p in ports)


def test_port_in_use_is_detected() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert devcluster.port_in_use(s.getsockname()[1])


def test_port_conflicts_are_recognised_in_logs() -> None:
    assert devcluster.mentions_port_conflict("listen tcp 127.0.0.1:6443: bind: address already in use")
    assert not devcluster.mentions_port_conflict("etcdserver: request timed out")


def test_a_recorded_pid_is_trusted_only_with_its_start_time(sleepers: list[subprocess.Popen[bytes]]) -> None:
    process = sleeper(sleepers)
    record = devcluster.record_of(process.pid)
    assert devcluster.is_running(record)
    reused = ProcessRecord(pid=process.pid, start_ticks=record.start_ticks - 1)
    assert not devcluster.is_running(reused)
    assert devcluster.stop_processes([reused]) == []  # never signal a process that merely has the same pid
    assert process.poll() is None


def test_stop_processes_escalates_to_sigkill(
    sleepers: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=devcluster.__name__)
    stubborn = sleeper(sleepers, ignore_term=True)
    polite = sleeper(sleepers)
    records = [devcluster.record_of(stubborn.pid), devcluster.record_of(polite.pid)]
    started = time.monotonic()
    assert sorted(devcluster.stop_processes(records, grace=0.5)) == sorted([stubborn.pid, polite.pid])
    assert time.monotonic() - started < 5
    assert gone(stubborn) and gone(polite)
    # (Exit statuses are not checked: stop_processes reaps its children's zombies itself.)
    killed = [r.getMessage() for r in caplog.records if "did not stop on SIGTERM" in r.getMessage()]
    assert killed == [f"process did not stop on SIGTERM, killing pid={stubborn.pid}"]


def test_teardown_cleans_up_after_a_killed_run(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    """A run killed with SIGKILL leaves cluster.json, live components and pods' processes behind."""
    state_dir = tmp_path / "dev-cluster"
    (state_dir / "node" / "pods" / "uid-1").mkdir(parents=True)
    (state_dir / devcluster.MARKER).touch()
    component, pod_process = sleeper(sleepers), sleeper(sleepers)
    dead = ProcessRecord(pid=2**22 + 7, start_ticks=1)  # a component that already died
    state = ClusterState(
        ports={"apiserver": 1}, processes={"etcd": devcluster.record_of(component.pid), "kube-apiserver": dead}
    )
    devcluster.save_state(state_dir, state)
    (state_dir / "node" / "pods" / "uid-1" / "main.pid").write_text(
        devcluster.record_of(pod_process.pid).model_dump_json()
    )

    stopped = devcluster.teardown(state_dir)

    assert sorted(stopped) == sorted([component.pid, pod_process.pid])
    assert gone(component) and gone(pod_process)
    assert not state_dir.exists()


def test_state_folder_that_is_not_ours_is_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(devcluster.ClusterError, match="refusing to delete"):
        devcluster.remove_state_dir(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_unreadable_state_is_treated_as_stale(tmp_path: Path) -> None:
    (tmp_path / devcluster.STATE_FILE).write_text("{half a file")
    assert devcluster.load_state(tmp_path) == ClusterState()
    assert devcluster.load_state(tmp_path / "missing") is None


def test_state_lock_times_out_with_a_clear_message(tmp_path: Path) -> None:
    state_dir = tmp_path / "dev-cluster"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('4242'); f.flush(); print('locked', flush=True); time.sleep(30)",
            str(tmp_path / ".dev-cluster.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        refused = pytest.raises(devcluster.ClusterError, match=r"another `lorasweep dev` command holds .* \(pid 4242\)")
        with refused, devcluster.state_lock(state_dir, timeout=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    with devcluster.state_lock(state_dir, timeout=1):
        pass


def fake_binaries(folder: Path, etcd_program: str) -> binaries.Binaries:
    """Stand-ins for the real binaries: `etcd` runs ``etcd_program``; nothing else gets started."""
    folder.mkdir()
    for name in binaries.ALL_BINARIES:
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{etcd_program if name == 'etcd' else 'raise SystemExit(1)'}\n")
        path.chmod(0o755)
    return binaries.Binaries({name: folder for name in binaries.ALL_BINARIES})


def test_a_component_that_exits_is_named_with_its_log(tmp_path: Path) -> None:
    fake = fake_binaries(tmp_path / "bin", "print('etcd: cannot open data dir: disk on fire')\nraise SystemExit(2)")
    state_dir = tmp_path / "state"
    with pytest.raises(devcluster.ClusterError) as caught:
        devcluster.up(state_dir, timeout=30, binaries=fake)
    message = str(caught.value)
    assert "etcd exited while waiting for etcd to report healthy" in message
    assert "disk on fire" in message
    assert str(state_dir / "logs") in message
    devcluster.down(state_dir)
    assert not state_dir.exists()


def test_a_component_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    fake = fake_binaries(tmp_path / "bin", "import time\nprint('etcd: waiting for peers', flush=True)\ntime.sleep(300)")
    state_dir = tmp_path / "state"
    with pytest.raises(devcluster.ClusterError, match="timed out waiting for etcd to report healthy") as caught:
        devcluster.up(state_dir, timeout=1.5, binaries=fake)
    assert "waiting for peers" in str(caught.value)
    state = devcluster.load_state(state_dir)
    assert state is not None
    assert not any(devcluster.is_running(r) for r in state.processes.values())  # nothing left running
    devcluster.down(state_dir)


def test_a_port_taken_during_start_up_is_retried_on_fresh_ports(tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    program = (
        "import sys\n"
        f"open({str(attempts)!r}, 'a').write(' '.join(a for a in sys.argv if a.startswith('--listen-client-urls')) + '\\n')\n"
        "print('listen tcp 127.0.0.1:2379: bind: address already in use')\n"
        "raise SystemExit(1)"
    )
    fake = fake_binaries(tmp_path / "bin", program)
    state_dir = tmp_path / "state"
    with pytest.raises(devcluster.ClusterError, match="address already in use"):
        devcluster.up(state_dir, timeout=30, binaries=fake)
    tried = attempts.read_text().splitlines()
    assert len(tried) == 3
    assert len(set(tried)) == 3  # each attempt on other ports
    devcluster.down(state_dir)


def test_clusters_of_killed_test_sessions_are_stopped(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    from fixtures_cluster import _clean_stale_sessions

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # a pytest session that is gone
    orphan, live_session = tmp_path / f"{finished.pid}-abc123", tmp_path / f"{os.getpid()}-def456"
    component = sleeper(sleepers)
    for folder in (orphan, live_session):
        folder.mkdir()
        (folder / devcluster.MARKER).touch()
    devcluster.save_state(orphan, ClusterState(processes={"etcd": devcluster.record_of(component.pid)}))
    devcluster.save_state(live_session, ClusterState())

    _clean_stale_sessions(tmp_path)

    assert gone(component)
    assert not orphan.exists()
    assert live_session.exists()  # this session's own cluster is left alone


def test_components_whose_record_was_deleted_are_found_by_their_flags(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """`rm -rf` of the state folder while the cluster runs: `down` (or the next `up`) still stops it."""
    state_dir = tmp_path / "dev-cluster"
    code = "import sys, time; print('ready', flush=True); time.sleep(300)"
    flagged = subprocess.Popen(
        [sys.executable, "-c", code, f"--data-dir={state_dir / 'etcd'}"], start_new_session=True, stdout=subprocess.PIPE
    )
    sleepers.append(flagged)
    assert flagged.stdout is not None and flagged.stdout.readline() == b"ready\n"
    bystander = subprocess.Popen(
        [sys.executable, "-c", code, "--state", str(state_dir)], start_new_session=True, stdout=subprocess.PIPE
    )
    sleepers.append(bystander)
    assert bystander.stdout is not None and bystander.stdout.readline() == b"ready\n"

    assert [r.pid for r in devcluster.unrecorded_components(state_dir)] == [flagged.pid]
    assert devcluster.teardown(state_dir) == [flagged.pid]
    assert gone(flagged)
    assert bystander.poll() is None
