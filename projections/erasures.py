"""GET /erasures/{erasure_id} on the query API: the state of an erasure request.

The command API records the request (`erasures`, migration 0004) and does it; this
only reads the row: one primary-key probe.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from projections import access


class ErasureOut(BaseModel):
    erasure_id: str
    status: Literal["pending", "done"]
    completed_at: datetime | None


router = APIRouter()


async def fetch_erasure(conn: psycopg.AsyncConnection, erasure_id: str) -> ErasureOut | None:
    row = await (await conn.execute(
        "SELECT status, completed_at FROM erasures WHERE erasure_id = %s",
        (erasure_id,))).fetchone()
    if row is None:
        return None
    return ErasureOut(erasure_id=erasure_id, status=row[0], completed_at=row[1])


@router.get("/erasures/{erasure_id}", response_model=ErasureOut,
            dependencies=[Depends(access.require_admin)],
            responses={404: {"description": "Unknown erasure"},
                       401: {"description": "No valid admin token (Bearer, or the HTTP "
                                            "Basic password)"}})
async def get_erasure(erasure_id: str, request: Request) -> Response:
    """Whether an erasure is still pending or done, and when it was done."""
    try:
        canonical = str(uuid.UUID(erasure_id))
    except ValueError:
        raise HTTPException(404, "unknown erasure") from None
    found = await request.app.state.database.run(fetch_erasure, canonical)
    if found is None:
        raise HTTPException(404, "unknown erasure")
    return Response(found.model_dump_json(), media_type="application/json")
