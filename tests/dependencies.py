"""Private PostgreSQL and Redis servers that a test may kill and restart.

The shared servers of ``tests/services.py`` must stay up for every other test, so fault tests
start their own: each on a free loopback port, in a temporary folder, with nothing persisted
but what the test writes. ``kill()`` is a crash (SIGKILL, no shutdown work), ``stop()`` a
clean shutdown, ``start()`` brings the server back on the *same* port (and, for PostgreSQL,
the same data directory, so committed rows survive a crash like they would in production).

    with PrivatePostgres() as pg, PrivateRedis() as redis:
        pg.kill()
        pg.start()
        pg.wait_ready()

Missing binaries raise :class:`DependencyUnavailable`; :func:`started` turns that into a
skip on a developer's machine and a FAILURE when ``CI`` is set, so a green CI run means the
faults were really injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest

S = TypeVar("S", bound="PrivateServer")

POSTGRES_BINDIR_ENV = "MOEREC_TEST_PG_BINDIR"  # a folder holding initdb and postgres
REDIS_SERVER_ENV = "MOEREC_TEST_REDIS_SERVER"  # the redis-server executable


class DependencyUnavailable(RuntimeError):  # noqa: N818 - reads as "the dependency is unavailable"
    """The server cannot be started on this machine (binaries or OS user missing)."""


def poll_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.05,
) -> Any:
    """Call ``condition`` until it returns something truthy; its value, or TimeoutError.

    Exceptions raised by ``condition`` count as "not yet" (a server that is still starting
    refuses connections); the last one is chained to the TimeoutError for the diagnosis.
    ``what`` names the condition in that error; a callable is asked only then, so the
    message can show the state at the deadline rather than at the start.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            name = what() if callable(what) else what
            raise TimeoutError(f"{name} not within {timeout:g} s (last error: {last!r})") from last
        time.sleep(interval)  # the poll interval, not a wait for the condition itself


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick, so parallel runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(stat).read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            if ppid == pid:
                found.append(int(text.split(" ", 1)[0]))
    return found


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie (it released its memory; only reaping is left)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].split()[0] in ("Z", "X")


class PrivateServer:
    """A server process on a fixed loopback port that survives kill/start cycles."""

    what = "server"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # ----------------------------------------------------------------------- to override

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Find the binaries and set up the folder (once); raise DependencyUnavailable."""

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _ping(self) -> bool:
        raise NotImplementedError

    # ----------------------------------------------------------------------- lifecycle

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / f"{self.what.lower()}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix=f"moerec-{self.what.lower()}-"))
        try:
            self._prepare()
            self.start()
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def start(self) -> None:
        """Start the server on its port (again); returns at once: call :meth:`wait_ready`."""
        if self.running:
            raise RuntimeError(f"{self.what} is already running (pid {self.pid})")
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in __exit__
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
            **self._popen_options(),
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """Crash the server: SIGKILL to it and every process it forked, no shutdown work."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        victims = [process.pid, *_children(process.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
        # Orphaned children still holding a port or shared memory would make the restart
        # fail ("address in use", PostgreSQL's "shared memory block is still in use").
        poll_until(lambda: all(_gone(pid) for pid in victims), 10, f"{self.what} processes to exit")

    def stop(self, timeout: float = 15.0) -> None:
        """A clean shutdown; a crash if it takes longer than ``timeout``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(self._stop_signal())
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once a real client connection works; fail with the server's log if not."""
        timeout = timeout if timeout is not None else self.startup_timeout

        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.what} exited:\n{self.log_tail()}")
            return self._ping()

        try:
            poll_until(ready, timeout, f"{self.what} on port {self.port} to answer")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.what} log ---\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bindir() -> Path:
    candidates: list[str] = []
    if os.environ.get(POSTGRES_BINDIR_ENV):
        candidates.append(os.environ[POSTGRES_BINDIR_ENV])
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    # Debian/Ubuntu keep the server binaries off PATH, one folder per major version.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += ["/usr/local/pgsql/bin", "/usr/pgsql/bin"]
    for folder in candidates:
        path = Path(folder)
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            return path
    raise DependencyUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found in "
        f"{', '.join(candidates)}; install them (apt-get install postgresql) or set "
        f"{POSTGRES_BINDIR_ENV} to the folder holding them"
    )


class PrivatePostgres(PrivateServer):
    """A throw-away PostgreSQL cluster: trust auth, user ``postgres``, database ``postgres``.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to
    (and runs as) the ``postgres`` OS user. fsync and full-page writes are off for speed: a
    SIGKILL of the server still loses nothing committed (every commit was written to the OS,
    which keeps it); only an OS crash would, which no test simulates.
    """

    what = "PostgreSQL"

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.bindir: Path | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL moerec takes."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """The libpq/asyncpg DSN, for queries that bypass moerec."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _prepare(self) -> None:
        self.bindir = _postgres_bindir()
        assert self.root is not None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise DependencyUnavailable(
                    "running as root, and PostgreSQL refuses root: an OS user 'postgres' is "
                    "needed to own the test cluster (apt's postgresql package creates it)"
                ) from None
            # mkdtemp made the folder 0700 root: the server's user must own what it writes.
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        sockets = self.root / "sockets"
        sockets.mkdir()
        if self._user is not None:
            os.chown(sockets, self._user.pw_uid, self._user.pw_gid)
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",  # a throw-away cluster: skip initdb's fsyncs (seconds)
            ],
            capture_output=True,
            timeout=120,
            check=False,
            **self._popen_options(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )

    def _popen_options(self) -> dict[str, Any]:
        env = {**os.environ, "LC_ALL": "C"}
        if self._user is None:
            return {"env": env}
        env["HOME"] = self._user.pw_dir
        return {
            "env": env,
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],  # drop root's supplementary groups too
            "cwd": str(self.root),  # the caller's folder may be unreadable to 'postgres'
        }

    def _command(self) -> list[str]:
        assert self.bindir is not None
        assert self.root is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root / "sockets"),
            # fsync only matters for an OS crash; synchronous_commit must stay on, since
            # with it off a SIGKILL loses commits still in the WAL buffers (shared memory).
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: ends sessions instead of waiting for them

    def _ping(self) -> bool:
        # A real connection: the port opens before crash recovery finishes, and until then
        # PostgreSQL answers "the database system is starting up".
        return bool(self.fetch("SELECT 1", timeout=2.0))

    def fetch(self, query: str, *args: object, timeout: float = 10.0) -> list[Any]:
        """Rows of ``query``, on a connection of its own (bypasses moerec)."""
        import asyncpg

        async def run() -> list[Any]:
            connection = await asyncpg.connect(self.dsn, timeout=timeout)
            try:
                return list(await connection.fetch(query, *args, timeout=timeout))
            finally:
                await connection.close()

        return asyncio.run(run())


# --------------------------------------------------------------------------- Redis


def _redis_server() -> Path:
    candidates = [os.environ.get(REDIS_SERVER_ENV), shutil.which("redis-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise DependencyUnavailable(
        "redis-server not found on PATH; install it (apt-get install redis-server) or set "
        f"{REDIS_SERVER_ENV} to the executable"
    )


class PrivateRedis(PrivateServer):
    """A throw-away Redis: no persistence, so a restart comes back empty (like a new node)."""

    what = "Redis"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.binary: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _prepare(self) -> None:
        self.binary = _redis_server()

    def _command(self) -> list[str]:
        assert self.binary is not None
        assert self.root is not None
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.root),
        ]

    def _ping(self) -> bool:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        try:
            return bool(client.ping())
        finally:
            client.close()


# --------------------------------------------------------------------------- pytest


@contextlib.contextmanager
def started(server: S) -> Iterator[S]:
    """``with server``, where missing binaries skip the test, or fail it under CI."""
    try:
        entered = server.__enter__()
    except DependencyUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set: fault tests must run, not skip)")
        pytest.skip(str(exc))
    try:
        yield entered
    finally:
        server.__exit__(None, None, None)
