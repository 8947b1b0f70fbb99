"""Several worker processes on one port: one listening line, supervision, group commit."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.workers import worker_cpu
from bench.csrs import pump_csrs
from bench.loadgen import LoadSpec, Target, exchange, run_load
from bench.procstat import process_tree
from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    Lab,
    RunningAppliance,
    curl,
    make_lab,
    run_cli,
    start_appliance,
)


@pytest.fixture(scope="module")
def workers_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(tmp_path_factory.mktemp("workers"), {"server": {"workers": 2}})


@pytest.fixture(scope="module")
def running(workers_lab: Lab) -> Iterator[RunningAppliance]:
    appliance = start_appliance(workers_lab)
    yield appliance
    appliance.stop()


def _target(appliance: RunningAppliance) -> Target:
    host, port = appliance.base.removeprefix("https://").rsplit(":", 1)
    lab = appliance.lab
    return Target(host, int(port), lab.ca_cert, lab.ra_cert, lab.ra_key, LAB_USER, LAB_PASSWORD)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_announce_once_and_serve(running: RunningAppliance) -> None:
    log = running.log_text()
    assert log.count("event=listening") == 1
    assert "workers=2" in log
    assert len(process_tree(running.process.pid)) == 3  # supervisor + 2 workers
    status, _headers, body = curl(["--cacert", str(running.lab.ca_cert), running.url("cacerts")])
    assert status == 200 and body


def test_concurrent_enrollments_from_both_workers_are_all_recorded(
    running: RunningAppliance,
) -> None:
    """Group commit under two processes: every certificate that left is in the ledger, once."""
    before = len(
        run_cli(
            "list", "--json", "--limit", "100000", "--config", str(running.lab.config)
        ).stdout.splitlines()
    )
    result = run_load(
        _target(running), LoadSpec("keepalive", 8, 2, requests=400), pump_csrs(16, keys=2)
    )
    assert result.ok == 400 and not result.errors
    lines = run_cli(
        "list", "--json", "--limit", "100000", "--config", str(running.lab.config)
    ).stdout.splitlines()
    # 400 measured enrollments plus one checked warm-up enrollment per connection.
    assert len(lines) - before == 400 + 8
    assert len(set(lines)) == len(lines)


def _connections_per_worker(appliance: RunningAppliance, port: int) -> list[int]:
    """Established connections to `port` each worker holds, from /proc (socket inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # TCP_ESTABLISHED
                inodes.add(fields[9])
    counts = []
    for pid in process_tree(appliance.process.pid)[1:]:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts.append(held)
    return sorted(counts)


def test_new_connections_go_to_the_least_loaded_worker(running: RunningAppliance) -> None:
    """One gateway's persistent connections spread evenly over the workers (a hash of the
    client's port, as SO_REUSEPORT did, put 20 of 32 on one worker)."""
    target = _target(running)
    csrs = pump_csrs(1, keys=1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(target.ca_cert))
    context.load_cert_chain(str(target.ra_cert), str(target.ra_key))
    request = (
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: appliance\r\n"
        b"Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(csrs[0])
    ) + csrs[0]
    gateways = []
    try:
        for _ in range(10):
            raw = socket.create_connection((target.host, target.port), timeout=30)
            sock = context.wrap_socket(raw, server_hostname=target.host)
            gateways.append(sock)
            status, _body, reusable = exchange(sock, request, bytearray())
            assert status == 200 and reusable
            # Gateways connecting one after another, not in one burst: the worker that became
            # the emptiest takes the socket back within its recheck (5 ms), which on a loaded
            # CI machine can take longer than one enrollment.
            time.sleep(0.1)
        assert _connections_per_worker(running, target.port) == [5, 5]
    finally:
        for sock in gateways:
            sock.close()


def _cpus_of_threads(pid: int) -> set[frozenset[int]]:
    """The CPU masks of every thread of `pid` (cheroot's pool included)."""
    return {
        frozenset(os.sched_getaffinity(int(thread))) for thread in os.listdir(f"/proc/{pid}/task")
    }


def test_each_worker_and_all_its_threads_stay_on_a_core_of_their_own(
    running: RunningAppliance,
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    # Serve some requests first, so that the pool threads exist and are checked too.
    run_load(_target(running), LoadSpec("keepalive", 4, 1, duration=0.5), pump_csrs(16, keys=2))
    masks = [_cpus_of_threads(pid) for pid in process_tree(running.process.pid)[1:]]
    assert all(len(thread_masks) == 1 for thread_masks in masks), masks  # every thread alike
    pinned = re.findall(r"event=worker_pinned worker=(\d+) cpu=(\d+)", running.log_text())
    if len(cpus) >= 2:
        assert sorted(next(iter(thread_masks)) for thread_masks in masks) == [
            frozenset({cpus[0]}),
            frozenset({cpus[1]}),
        ]
        assert sorted(pinned)[:2] == [("0", str(cpus[0])), ("1", str(cpus[1]))]
    else:  # two workers on one CPU: more workers than CPUs are never pinned
        assert masks == [{frozenset(cpus)}, {frozenset(cpus)}]
        assert pinned == []


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    running: RunningAppliance,
) -> None:
    supervisor = running.process.pid
    old = process_tree(supervisor)[1:]
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = process_tree(supervisor)[1:]
        if len(current) == 2 and old[0] not in current:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker not replaced: {process_tree(supervisor)}")
    assert "event=worker_exited worker=" in running.log_text()
    running.assert_alive()
    if len(os.sched_getaffinity(0)) >= 2:  # the successor takes its predecessor's core
        masks = [_cpus_of_threads(pid) for pid in process_tree(supervisor)[1:]]
        assert len({mask for thread_masks in masks for mask in thread_masks}) == 2
        assert all(len(thread_masks) == 1 for thread_masks in masks)


def test_workers_die_with_a_killed_supervisor(tmp_path: Path, workers_lab: Lab) -> None:
    appliance = start_appliance(workers_lab)
    workers = process_tree(appliance.process.pid)[1:]
    assert len(workers) == 2
    appliance.process.kill()
    appliance.process.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived their supervisor"
    status, headers, _body = curl(
        ["--cacert", str(workers_lab.ca_cert), appliance.url("cacerts")], timeout=5
    )
    assert status == 0, headers


def test_cpu_affinity_off_leaves_the_workers_to_the_scheduler(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    lab = make_lab(tmp_path, {"server": {"workers": 2, "cpu_affinity": "off"}})
    appliance = start_appliance(lab)
    try:
        for pid in process_tree(appliance.process.pid)[1:]:
            assert _cpus_of_threads(pid) == {frozenset(cpus)}
        assert "event=worker_pinned" not in appliance.log_text()
    finally:
        appliance.stop()


@pytest.mark.parametrize(
    ("index", "count", "cpus", "setting", "expected"),
    [
        (0, 2, [0, 1], "auto", 0),
        (1, 2, [0, 1], "auto", 1),
        (1, 2, [2, 5, 7], "auto", 5),  # the allowed set (taskset, CPUAffinity=), in order
        (0, 1, [0, 1], "auto", None),  # one process keeps every core for its handshakes
        (3, 4, [0, 1], "auto", None),  # more workers than cores: let the kernel balance
        (0, 2, [0, 1], "off", None),
    ],
)
def test_which_cpu_a_worker_is_kept_on(
    index: int, count: int, cpus: list[int], setting: str, expected: int | None
) -> None:
    assert worker_cpu(index, count, cpus, setting) == expected


def test_cpu_affinity_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.cpu_affinity: must be one of auto, off"):
        parse_config({"server": {"cpu_affinity": "on"}}, base_dir=tmp_path)


@pytest.mark.parametrize(("value", "ok"), [(0, True), (2, True), (-1, False), (65, False)])
def test_workers_setting_is_validated(tmp_path: Path, value: int, ok: bool) -> None:
    raw = {"server": {"workers": value}}
    if ok:
        assert parse_config(raw, base_dir=tmp_path).server.workers == value
    else:
        with pytest.raises(ConfigError, match=r"server\.workers: must be between 0 and 64"):
            parse_config(raw, base_dir=tmp_path)


def test_a_port_in_use_is_one_clear_sentence(workers_lab: Lab) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve", "--config", str(workers_lab.config), "--port", str(port), check=False
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
