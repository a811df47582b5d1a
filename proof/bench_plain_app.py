"""The plain alternative the bench compares the write path with: one FastAPI endpoint that
decides each sign-up in one PostgreSQL transaction and answers the decision at once.

Run: DATABASE_URL=postgresql://... PLAIN_PORT=8101 python -m proof.bench_plain_app

What a university would build first, without Kafka: the same body model as the command
API (`command_api.models.SignUpRequest`, so the same validation), the same uvicorn
settings (one process, no access log, no server header), and per sign-up one
transaction on a pool of as many connections as the command API's key store has:

1. insert the sign-up, unique per course and address among the accepted ones (a second
   seat for the same student conflicts: the transaction is rolled back and the sign-up
   recorded as rejected `already_enrolled`);
2. take a seat with a conditional `UPDATE ... WHERE seats_taken < capacity`, which locks
   the course's row until the commit (the course's single writer, here a row lock);
   without a seat the transaction is rolled back and the sign-up recorded as rejected;
3. count the birth date per course (the statistics' upsert);
4. write an outbox row, the e-mail to send.

A rejected sign-up (`course_full`, `course_not_found`) is recorded with its outbox row
too. With an `Idempotency-Key` the sign-up id is the command API's, and a repeat answers
the recorded decision. No middleware, no metrics, no logs: the baseline is the bare
decision. Its tables live in a schema of their own, `plain_baseline`, of the same
PostgreSQL server as the stack under test; `create_schema` drops and re-creates it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
import uvicorn
from fastapi import FastAPI, Header, Response
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from command_api.models import SignUpRequest
from schemas.addresses import same_student_form

SCHEMA = "plain_baseline"
POOL_SIZE = 10  # the command API's KEY_STORE_POOL_SIZE default

_DDL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.courses (
    course_id text PRIMARY KEY,
    capacity integer NOT NULL,
    seats_taken integer NOT NULL DEFAULT 0 CHECK (seats_taken <= capacity)
);
CREATE TABLE {SCHEMA}.signups (
    signup_id uuid PRIMARY KEY,
    course_id text NOT NULL,
    email text NOT NULL,
    name text NOT NULL,
    date_of_birth date NOT NULL,
    status text NOT NULL,
    reason text,
    decided_at timestamptz NOT NULL DEFAULT now()
);
-- One student, one seat per course.
CREATE UNIQUE INDEX signups_one_seat ON {SCHEMA}.signups (course_id, email)
    WHERE status = 'accepted';
CREATE TABLE {SCHEMA}.course_birth_dates (
    course_id text NOT NULL,
    date_of_birth date NOT NULL,
    students integer NOT NULL,
    PRIMARY KEY (course_id, date_of_birth)
);
CREATE TABLE {SCHEMA}.outbox (
    id bigserial PRIMARY KEY,
    signup_id uuid NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

_TAKE_SEAT = (f"UPDATE {SCHEMA}.courses SET seats_taken = seats_taken + 1"
              " WHERE course_id = %s AND seats_taken < capacity RETURNING seats_taken")
_INSERT = (f"INSERT INTO {SCHEMA}.signups"
           " (signup_id, course_id, email, name, date_of_birth, status, reason)"
           " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING signup_id")
_COUNT_BIRTH_DATE = (f"INSERT INTO {SCHEMA}.course_birth_dates VALUES (%s, %s, 1)"
                     " ON CONFLICT (course_id, date_of_birth)"
                     " DO UPDATE SET students = course_birth_dates.students + 1")
_OUTBOX = f"INSERT INTO {SCHEMA}.outbox (signup_id, kind, payload) VALUES (%s, %s, %s)"
_DECIDED = f"SELECT status, reason FROM {SCHEMA}.signups WHERE signup_id = %s"
_COURSE_EXISTS = f"SELECT 1 FROM {SCHEMA}.courses WHERE course_id = %s"


def create_schema(conninfo: str) -> None:
    """The baseline's tables, empty (dropped first if they were there)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_DDL)


def create_courses(conninfo: str, course_ids: Sequence[str], capacity: int) -> None:
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {SCHEMA}.courses (course_id, capacity) VALUES (%s, %s)",
                        [(c, capacity) for c in course_ids])


def decisions(conninfo: str) -> dict[str, int]:
    """Sign-ups recorded per status, and outbox rows (to check a run)."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(f"SELECT status, count(*) FROM {SCHEMA}.signups GROUP BY status")
        counts = {str(status): int(n) for status, n in rows}
        outbox = conn.execute(f"SELECT count(*) FROM {SCHEMA}.outbox").fetchone()
    return {**counts, "outbox": int(outbox[0]) if outbox else 0}


async def decide(conn: psycopg.AsyncConnection, signup_id: str, course_id: str,
                 body: SignUpRequest, repeatable: bool) -> tuple[str, str | None]:
    """One sign-up decided and recorded; (status, reason)."""
    if repeatable:
        found = await (await conn.execute(_DECIDED, (signup_id,))).fetchone()
        if found is not None:
            return str(found[0]), found[1]
    # One student, one seat: the address in the form the system compares students in.
    row = (signup_id, course_id, same_student_form(body.email), body.name, body.date_of_birth)
    async with conn.transaction() as tx:
        # Inserted first, so that the course's row stays locked (from the UPDATE to the
        # commit) for as few round trips as possible.
        inserted = await (await conn.execute(_INSERT, (*row, "accepted", None))).fetchone()
        if inserted is None:
            # The student holds a seat already (or the id was decided meanwhile).
            reason = "already_enrolled"
            raise psycopg.Rollback(tx)
        seat = await (await conn.execute(_TAKE_SEAT, (course_id,))).fetchone()
        if seat is not None:
            await conn.execute(_COUNT_BIRTH_DATE, (course_id, body.date_of_birth))
            await conn.execute(_OUTBOX, (signup_id, "accepted", Jsonb(
                {"course_id": course_id, "seats_taken": seat[0]})))
            return "accepted", None
        # No seat: the sign-up is rolled back and recorded as rejected below.
        if (await (await conn.execute(_COURSE_EXISTS, (course_id,))).fetchone()) is None:
            reason = "course_not_found"
        else:
            reason = "course_full"
        raise psycopg.Rollback(tx)
    async with conn.transaction():
        inserted = await (await conn.execute(_INSERT, (*row, "rejected", reason))).fetchone()
        if inserted is None:  # a repeat of the same sign-up id, decided concurrently
            found = await (await conn.execute(_DECIDED, (signup_id,))).fetchone()
            return (str(found[0]), found[1]) if found else ("rejected", reason)
        await conn.execute(_OUTBOX, (signup_id, "rejected", Jsonb(
            {"course_id": course_id, "reason": reason})))
    return "rejected", reason


def create_app(conninfo: str, pool_size: int = POOL_SIZE) -> FastAPI:
    # Autocommit: each `transaction()` block is one BEGIN ... COMMIT.
    pool = AsyncConnectionPool(conninfo, min_size=pool_size, max_size=pool_size, open=False,
                               kwargs={"autocommit": True}, name="plain-baseline")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="plain PostgreSQL baseline", lifespan=lifespan)

    @app.post("/courses/{course_id}/signups", status_code=200)
    async def sign_up(
        course_id: str, body: SignUpRequest, response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> dict[str, Any]:
        """Decide the sign-up in one transaction and answer the decision."""
        # An Idempotency-Key belongs to one student, as in the command API.
        signup_id = (str(uuid.uuid5(uuid.NAMESPACE_URL, "\x00".join(
            (course_id, same_student_form(body.email), idempotency_key)))) if idempotency_key
                     else str(uuid.uuid4()))
        async with pool.connection() as conn:
            status, reason = await decide(conn, signup_id, course_id, body,
                                          idempotency_key is not None)
        response.headers["Location"] = f"/signups/{signup_id}"
        return {"signup_id": signup_id, "status": status, "reason": reason}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    uvicorn.run(create_app(os.environ["DATABASE_URL"],
                           int(os.environ.get("PLAIN_POOL_SIZE", POOL_SIZE))),
                host="127.0.0.1", port=int(os.environ.get("PLAIN_PORT", "8101")),
                log_config=None, access_log=False, server_header=False,
                timeout_graceful_shutdown=7)


if __name__ == "__main__":
    main()
