"""PostgreSQL from Debian's packages: a private cluster under $RUN_DIR/pg on 127.0.0.1 only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from stack import packages
from stack.config import StackConfig
from stack.procs import (
    StackError,
    as_user,
    is_running,
    log_file,
    port_open,
    spawn,
    stop,
    taken_message,
    wait_ready,
)

NAME = "postgres"
DATABASE = "coursesignup"


def bin_dir() -> Path:
    """The newest installed server; installs Debian's `postgresql` when none is."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        packages.apt_install("postgresql")
        return bin_dir_installed()
    return found[-1].parent


def bin_dir_installed() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise StackError("postgres: no server binaries under /usr/lib/postgresql after installing "
                         "Debian's `postgresql` package")
    return found[-1].parent


def run_as() -> str | None:
    """PostgreSQL refuses to run as root; as root we use the package's `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError("postgres: running as root needs the `postgres` system user, which "
                         "Debian's postgresql package creates") from exc
    return "postgres"


def data_dir(config: StackConfig) -> Path:
    return config.run_dir / "pg" / "data"


def _hand_over(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for folder in [path, *path.parents]:
        if folder == Path("/"):
            break
        # Let the server user reach its data dir through our folders (search bit only).
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def init_cluster(config: StackConfig) -> None:
    data = data_dir(config)
    if (data / "PG_VERSION").exists():
        return
    bins = bin_dir()
    user = run_as()
    data.parent.mkdir(parents=True, exist_ok=True)
    if data.exists():
        shutil.rmtree(data)  # a half-initialised cluster from an interrupted start
    data.mkdir(mode=0o700)
    _hand_over(data.parent, user)
    _hand_over(data, user)
    result = subprocess.run(
        [str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
        capture_output=True, text=True, **as_user(user),
    )
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"postgres: initdb failed:\n{result.stdout}{result.stderr}")
    # Trust is limited to loopback: the server listens on 127.0.0.1 only.
    (data / "pg_hba.conf").write_text(
        "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
    )


def start(config: StackConfig) -> bool:
    if is_running(config, NAME):
        return False
    if port_open(config.pg_port):
        raise StackError(taken_message(NAME, config.pg_port, "PG_PORT"))
    init_cluster(config)
    data = data_dir(config)
    (data / "postmaster.pid").unlink(missing_ok=True)  # left behind by a kill -9
    argv = [
        str(bin_dir() / "postgres"), "-D", str(data),
        "-c", "listen_addresses=127.0.0.1", "-c", f"port={config.pg_port}",
        "-c", "unix_socket_directories=", "-c", "max_connections=200",
        "-c", "shared_buffers=256MB", "-c", "log_min_messages=warning",
    ]
    pid = spawn(config, NAME, argv, user=run_as())
    wait_ready(lambda: _connectable(config), 60, "postgres", log_file(config, NAME), pid)
    create_database(config)
    return True


def stop_server(config: StackConfig) -> bool:
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
    return stop(config, NAME, sig=signal.SIGINT)


def _connectable(config: StackConfig) -> bool:
    import psycopg

    with psycopg.connect(_admin_url(config), connect_timeout=2):
        return True


def _admin_url(config: StackConfig) -> str:
    return f"postgresql://postgres@127.0.0.1:{config.pg_port}/postgres"


def create_database(config: StackConfig) -> None:
    import psycopg

    with psycopg.connect(_admin_url(config), autocommit=True) as conn:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        exists = conn.execute(query, (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def migrate(config: StackConfig) -> list[str]:
    import migrations

    return migrations.apply(config.database_url)
