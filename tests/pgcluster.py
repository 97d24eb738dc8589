"""A PostgreSQL for the tests: the one ``TASKFLEET_TEST_POSTGRES`` names (a URL), or a private
cluster started for the session in a temporary folder, with a fresh database per test.

The private cluster: ``initdb`` and ``pg_ctl`` from ``PATH`` or ``/usr/lib/postgresql/*/bin``,
run as an unprivileged user when the tests run as root (``initdb`` refuses root: the
``postgres`` system user if there is one, else ``nobody``), listening only on a unix socket in
its own folder (no TCP port to collide on), ``fsync`` off (a test database need not survive a
power cut). It is stopped and its folder removed at the end of the session.

No PostgreSQL: the cases that need one are skipped with the reason, unless
``TASKFLEET_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it), which makes that a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass

URL_ENV = "TASKFLEET_TEST_POSTGRES"
REQUIRE_ENV = "TASKFLEET_REQUIRE_POSTGRES"


class NoPostgres(Exception):
    """No PostgreSQL to test against; the message says why and how to get one."""


def binaries() -> str | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (None: not installed)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(versions[-1]) if versions else None


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix to run the server as someone else than root, and their ids."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    raise NoPostgres("running as root with neither a postgres nor a nobody user for initdb")


@dataclass
class Cluster:
    """A running PostgreSQL: ``url`` reaches its ``postgres`` database as a superuser."""

    url: str
    folder: str | None = None
    bin: str = ""
    prefix: tuple[str, ...] = ()

    def database_url(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def stop(self) -> None:
        if self.folder is None:
            return
        subprocess.run(
            [
                *self.prefix,
                f"{self.bin}/pg_ctl",
                "-D",
                f"{self.folder}/data",
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start(*, durable: bool = False, use_env: bool = True) -> Cluster:
    """The session's PostgreSQL (see the module); raises NoPostgres. ``durable``: with fsync,
    as a site would run it (the bench: ``synchronous_commit`` off, the same promise as the NS's
    SQLite in WAL with ``synchronous=NORMAL``: a crash may lose the last commits, never
    corrupt)."""
    given = os.environ.get(URL_ENV) if use_env else None
    if given:
        return Cluster(url=given)
    folder_bin = binaries()
    if folder_bin is None:
        raise NoPostgres(
            f"no PostgreSQL: initdb is not installed (apt-get install postgresql) and {URL_ENV}"
            " names no server"
        )
    prefix, uid, gid = _as_user()
    folder = tempfile.mkdtemp(prefix="taskfleet-pg-")
    try:
        if uid is not None and gid is not None:
            os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)
        run = [
            *prefix,
            f"{folder_bin}/initdb",
            "-D",
            f"{folder}/data",
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        subprocess.run(run, capture_output=True, check=True, timeout=120)
        options = f"-k {folder} -c listen_addresses='' -c synchronous_commit=off"
        options += " -c max_connections=400"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        subprocess.run(
            [
                *prefix,
                f"{folder_bin}/pg_ctl",
                "-D",
                f"{folder}/data",
                "-l",
                f"{folder}/log",
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            check=True,
            timeout=90,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log = ""
        if os.path.exists(f"{folder}/log"):
            with open(f"{folder}/log") as fh:
                log = fh.read()[-2000:]
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(folder, ignore_errors=True)
        raise NoPostgres(
            f"could not start a private PostgreSQL: {exc} {detail.decode(errors='replace')} {log}"
        ) from exc
    url = f"postgresql://postgres@/postgres?host={urllib.parse.quote(folder)}"
    return Cluster(url=url, folder=folder, bin=folder_bin, prefix=tuple(prefix))


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def fresh_name() -> str:
    return "tf_" + uuid.uuid4().hex[:16]
