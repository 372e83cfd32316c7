"""Who runs a job, and whether it still does: owner (host, pid, process start) and heartbeat.

A job records its owner when it is created and refreshes ``heartbeat_at`` every
:data:`HEARTBEAT_S` seconds while its process lives (a daemon thread of the store). A
job still ``pending`` or ``running`` is *interrupted* when its owner is on this host
and that process is gone (killed, crashed, the machine rebooted), or when its
heartbeat is older than :data:`STALE_S` (an owner on another host).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_S = 60.0
LIVE_STATUSES = ("pending", "running")


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie is dead already


def this_owner() -> str:
    """``host:pid:start`` of this process (start is empty where /proc is missing)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def is_dead(owner: str | None, heartbeat_at: datetime | None, now: datetime) -> bool:
    """True when the job's owner is known to be gone (see the module's docstring)."""
    if owner is None:
        return False  # recorded before schema 2: nothing to tell
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        ticks = _start_ticks(pid)
        if ticks is not None:
            return bool(start) and ticks != start  # the pid now belongs to another process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return _start_ticks(pid) is None and Path("/proc").is_dir()
    return heartbeat_at is not None and now - heartbeat_at > timedelta(seconds=STALE_S)


class Heartbeat:
    """A daemon thread that calls ``touch(job_ids)`` every ``every_s`` while jobs run."""

    def __init__(self, touch: Callable[[list[str]], None], every_s: float = HEARTBEAT_S) -> None:
        self._touch = touch
        self._every_s = every_s
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="marketlake-job-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                jobs = sorted(self._jobs)
            if jobs:
                with contextlib.suppress(Exception):  # a missed beat: the next one follows
                    self._touch(jobs)
