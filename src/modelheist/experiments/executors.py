"""Where independent jobs of a grid run: in this process, in a local process pool, or on a Ray
cluster (Moritz et al., OSDI '18). Each executor yields ``(job, result)`` as jobs finish, so
the caller records each result the moment it exists: a failed job stops the grid, and what
finished before it is kept.

The job function must be importable by name (a worker imports it); jobs and results travel
between processes by pickling, as the process pool and Ray do, and are modelheist's own
objects, never a file a user supplied. A Ray cluster of several machines needs the run folder
on a filesystem every node sees.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from modelheist.errors import ModelheistError

Job = TypeVar("Job")


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LocalExecutor:
    """``jobs`` worker processes (1: in this process, one job after another)."""

    jobs: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ModelheistError(f"--jobs must be at least 1, got {self.jobs}")

    def threads(self) -> int | None:
        """Threads each job may use: the cores shared among the workers (None with one job at
        a time in this process: the process keeps its own count; a pool given a single job
        runs it here with the pool's share)."""
        return None if self.jobs == 1 else max(1, cores() // self.jobs)

    def run(self, fn: Callable[[Job], Any], jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]:
        """``(job, fn(job))`` as each finishes. After a failed job no queued job starts, but
        the jobs already running finish first (their results are kept, not yielded)."""
        if self.jobs == 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, fn(job)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a threaded torch
        with ProcessPoolExecutor(min(self.jobs, len(jobs)), mp_context=context) as pool:
            pending = {pool.submit(fn, job): job for job in jobs}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        yield pending.pop(future), future.result()
            except BaseException:  # a failed job (or an interrupt): start no queued job
                pool.shutdown(wait=False, cancel_futures=True)
                raise


@dataclass(frozen=True)
class RayExecutor:
    """Jobs as Ray tasks, ``threads`` CPUs each: on the cluster at ``address`` (``host:port``
    of its head node, ``ray://host:port`` of a Ray client server, or ``auto``), or on a Ray
    instance started for the run and stopped after it (``address`` None)."""

    address: str | None = None
    threads_per_job: int = 1

    def threads(self) -> int:
        return self.threads_per_job

    def connect(self) -> None:
        """Fail with one line, before anything is written, when the cluster cannot be reached."""
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ModelheistError(
                "the Ray executor needs Ray: pip install 'modelheist[ray]'"
            ) from None
        if self.address in (None, "auto"):
            return
        host, port = _host_port(self.address)
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
        except OSError as exc:
            raise ModelheistError(
                f"cannot reach the Ray cluster at {self.address}: {exc.strerror or exc}"
            ) from None

    def run(self, fn: Callable[[Job], Any], jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]:
        import ray

        self.connect()
        started = not ray.is_initialized()
        if started:
            options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address is None:
                options.update(num_cpus=cores(), include_dashboard=False)
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelheistError(f"cannot start Ray at {self.address}: {first}") from None
        try:
            task = ray.remote(num_cpus=self.threads_per_job, max_retries=0)(fn)
            pending = {task.remote(job): job for job in jobs}
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    job = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        if isinstance(exc.cause, ModelheistError):
                            raise exc.cause from None  # a user error, said in one line
                        raise
                    yield job, result
        finally:
            if started:
                ray.shutdown()


def _host_port(address: str) -> tuple[str, int]:
    """The host and port of a Ray address, or a one-line error."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ModelheistError(
            f"a Ray address is HOST:PORT, ray://HOST:PORT or auto; got {address!r}"
        )
    return host.strip("[]"), int(port)


def executor_for(kind: str, jobs: int = 1, address: str | None = None):
    """The executor ``--executor`` names: ``local`` (``jobs`` processes) or ``ray``."""
    if kind == "local":
        if address is not None:
            raise ModelheistError("--address goes with --executor ray")
        return LocalExecutor(jobs)
    if kind == "ray":
        return RayExecutor(address, max(1, cores() // max(1, jobs)) if address is None else 1)
    raise ModelheistError(f"unknown executor {kind!r}; choose local or ray")
