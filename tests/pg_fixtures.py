"""A throwaway PostgreSQL server for the audit-store tests.

``postgres_server`` (session-scoped) finds Debian's ``initdb``/``pg_ctl`` (running
``scripts/install_postgres.sh`` first when they are missing), initialises a cluster in a
temporary folder and starts it on a Unix socket in that folder with TCP off
(``listen_addresses=''``), as the ``postgres`` user when the tests run as root. It stops the
server and removes the folder at the end of the session. Skips, with the reason, when
PostgreSQL or psycopg is not there or the server cannot start.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return Path(d)
    return None


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="qkscore-pg-"))
        self.data = self.folder / "data"
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user") from None
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            self.user = "postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = [_runuser(), "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        res = self._run("initdb", "-D", str(self.data), "-U", "qkscore", "--auth=trust", "-E",
                        "UTF8", "--no-sync")  # fmt: skip
        if res.returncode:
            raise RuntimeError(f"initdb failed: {res.stderr.strip()[-300:]}")
        opts = f"-k {self.folder} -c listen_addresses='' -c fsync=off -c max_connections=60"
        res = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-o",
                        opts, "-w", "-t", "60", "start")  # fmt: skip
        if res.returncode:
            log = (self.folder / "log").read_text(errors="replace")[-300:]
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()[-200:]} {log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://qkscore@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (OSError, subprocess.SubprocessError):
            pass  # never started (or its tools are gone): nothing to stop
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _runuser() -> str:
    """runuser lives in /usr/sbin, which a minimal PATH (CI, env -i) may leave out."""
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError("running as root and runuser (util-linux) is not installed")
    return found


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip(
        "psycopg", reason="psycopg is not installed (bash scripts/install_postgres.sh)"
    )
    pytest.importorskip("psycopg_pool", reason="psycopg-pool is not installed")
    bindir = _bindir()
    if bindir is None and os.environ.get("QKSCORE_SKIP_POSTGRES_INSTALL") != "1":
        subprocess.run(["bash", str(ROOT / "scripts" / "install_postgres.sh")], check=False,
                       capture_output=True, timeout=900)  # fmt: skip
        bindir = _bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL (initdb, pg_ctl) is not installed: bash scripts/install_postgres.sh "
            "installs Debian's postgresql"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        server.stop()
        pytest.skip(f"PostgreSQL could not start: {err}")
    try:
        yield server
    finally:
        server.stop()
