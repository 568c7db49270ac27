"""Processes the benchmark starts: launch, wait until they answer, account, stop.

Every process is started in its own session (process group), remembered, and stopped by
its group id when the bench ends, whatever way it ends. CPU time and peak memory come
from the processes' own accounting in /proc, summed over a server and its workers.
"""

from __future__ import annotations

# ruff: noqa: S603 - starts the servers this bench defines
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The process and all its descendants still alive (the server's workers)."""
        return [self.pid, *descendants(self.pid)]

    def workers(self) -> list[int]:
        """The processes that serve requests: the children when there are any (uvicorn,
        granian and LiteLLM with several workers), else the process itself. Helpers such
        as multiprocessing's resource tracker are children too; they count for CPU and are
        small enough never to be the peak. The workers' own children (Tollgate's token
        counter) are not workers: see ``helpers``."""
        children = children_of(self.pid)
        return children or [self.pid]

    def helpers(self) -> list[int]:
        """The workers' own children (Tollgate's workers start none: they share one token
        counter, see ``shared``)."""
        workers = set(self.workers())
        return [pid for pid in descendants(self.pid) if pid not in workers]

    def shared(self) -> list[int]:
        """Tollgate's token counter of this server's deployment (``relay.token_server``):
        started by a worker that must count, then detached from it, so not a descendant.
        Found by its command and the data directory it inherited from the server."""
        var_dir = _environ(self.pid).get("TOLLGATE_VAR_DIR")
        if not var_dir:
            return []
        return [
            pid
            for pid in pids_running("relay.token_server")
            if _environ(pid).get("TOLLGATE_VAR_DIR") == var_dir
        ]

    def cpu_seconds(self) -> float:
        """CPU of the server: its processes alive now, plus what the master's reaped
        children used (a worker that died or was replaced keeps counting), plus its
        deployment's shared token counter."""
        return cpu_seconds(self.pid, reaped_children=True) + sum(
            cpu_seconds(pid) for pid in [*descendants(self.pid), *self.shared()]
        )

    def peak_rss_mb(self) -> float:
        """The largest VmHWM (peak resident set) among the serving processes."""
        return max((peak_rss_kb(pid) for pid in self.workers()), default=0) / 1024

    def helpers_peak_rss_mb(self) -> float:
        """The largest VmHWM among the workers' children (0 when there are none)."""
        return max((peak_rss_kb(pid) for pid in self.helpers()), default=0) / 1024

    def shared_peak_rss_mb(self) -> float:
        """The VmHWM of the deployment's shared token counter (0 when none ran)."""
        return max((peak_rss_kb(pid) for pid in self.shared()), default=0) / 1024

    def alive(self) -> bool:
        return self.process.poll() is None


class Services:
    """Everything started; ``stop_all`` ends each process group, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Service] = []

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path | None = None
    ) -> Service:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log)
        self.started.append(service)
        return service

    def stop(self, service: Service, timeout: float = 10.0) -> None:
        if service.stopped:
            return
        service.stopped = True
        shared = service.shared()  # its own session: the group kill misses it
        for pid in shared:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if service.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=timeout)
        # Workers can outlive a master that exited first: end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=5)

    def stop_all(self) -> None:
        for service in reversed(self.started):
            self.stop(service)


def children_of(pid: int) -> list[int]:
    """The live children of ``pid``, from /proc."""
    return _parents().get(pid, [])


def _parents() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read(f"/proc/{entry.name}/stat")
        if stat is None:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid``, from /proc."""
    parents = _parents()
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in parents.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def pids_named(names: frozenset[str]) -> list[int]:
    """Processes whose command name is one of ``names`` (e.g. postgres, redis-server)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (_read(f"/proc/{entry.name}/comm") or "").strip() in names:
            found.append(int(entry.name))
    return found


def pids_running(module: str) -> list[int]:
    """Python processes started with ``-m module``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            argv = (_read(f"/proc/{entry.name}/cmdline") or "").split("\0")
            if any(a == "-m" and b == module for a, b in itertools.pairwise(argv)):
                found.append(int(entry.name))
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = _read(f"/proc/{pid}/environ") or ""
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User plus system CPU time of one process (all its threads), in seconds; with
    ``reaped_children``, also that of its children it has waited for (cutime, cstime)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return 0.0
    # Fields after the command name (which may hold spaces) start at field 3 (state):
    # utime, stime, cutime and cstime are fields 14-17.
    fields = stat.rsplit(")", 1)[-1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def peak_rss_kb(pid: int) -> int:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def wait_http(url: str, service: Service, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers at all (any status), or fail with the service's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited early; see {service.log}:\n{tail(service)}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer {url} in {timeout:.0f}s:\n{tail(service)}")


def tail(service: Service, lines: int = 30) -> str:
    try:
        return "\n".join(service.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
