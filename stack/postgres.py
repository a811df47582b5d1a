"""PostgreSQL from Debian's packages: a private cluster under $RUN_DIR/pg on 127.0.0.1 only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from stack import packages
from stack.config import PG_DATABASE, PG_OWNER, PG_SERVICE_ROLES, PG_SUPERUSER, StackConfig
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
from stack.secrets import write_secret

NAME = "postgres"
DATABASE = PG_DATABASE
# Every connection authenticates with a password (SCRAM), also from loopback; there is
# no Unix socket (unix_socket_directories is empty), hence no `local` line.
HBA = ("host all all 127.0.0.1/32 scram-sha-256\n"
       "host all all ::1/128 scram-sha-256\n")


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
    # The superuser's password goes in through a private file that only initdb's user
    # reads (a pipe of root's is not readable by the `postgres` user), removed at once.
    pwfile = data.parent / "initdb-password"
    write_secret(pwfile, config.pg_password(PG_SUPERUSER) + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        result = subprocess.run(
            [str(bins / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
             "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True, text=True, **as_user(user),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"postgres: initdb failed:\n{result.stdout}{result.stderr}")
    (data / "pg_hba.conf").write_text(HBA)


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
    if "trust" in (data / "pg_hba.conf").read_text():
        raise StackError(f"postgres: {data} was made by an older version of the stack, which "
                         "trusted every local connection; this one needs passwords. Move "
                         f"{config.run_dir} away (or `make down` and delete it) and start again.")
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
    return config.pg_url(PG_SUPERUSER, "postgres")


def create_database(config: StackConfig) -> None:
    """The owner and the services' login roles, each with its generated password (set
    again at every start, so the files under $RUN_DIR/secrets stay the truth), and the
    database, owned by the owner (so is its public schema, PostgreSQL 15's
    pg_database_owner). Grants are the migrations' business (0005_service_roles.sql)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(_admin_url(config), autocommit=True) as conn:
        for role in (PG_OWNER, *PG_SERVICE_ROLES.values()):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(config.pg_password(role))))
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        exists = conn.execute(query, (DATABASE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(PG_OWNER)))
    write_secret(config.postgres_admin_url_file, config.database_url + "\n")


def migrate(config: StackConfig) -> list[str]:
    import migrations

    return migrations.apply(config.database_url)
