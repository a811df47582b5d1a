"""Who may read what on the query API (README, "Threat model").

The statistics, the course pages and the dashboard need the analyst token (the admin
token works too); an erasure's status needs the admin token. Either comes as
`Authorization: Bearer <token>`, or as HTTP Basic with any user name and the token as
the password, so that a browser can open the dashboard: a 401 carries a Basic
challenge, and the browser asks for it. Tokens are compared in constant time, each
against every accepted one, so neither the length of a match nor which token matched
shows in the timing. A decision (`/signups/{id}`) and the probes stay open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request

REALM = "course-signup"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8", Bearer realm="{REALM}"'


def presented(authorization: str | None) -> bytes | None:
    """The token of an Authorization header (Bearer, or Basic's password); None if none."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip().encode() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password or None if colon else None
    return None


def matches(given: bytes | None, accepted: Sequence[bytes]) -> bool:
    """Whether `given` is one of `accepted`; every comparison runs, in constant time."""
    if given is None:
        return False
    found = False
    for token in accepted:
        found |= hmac.compare_digest(given, token)
    return found


def _require(request: Request, accepted: Sequence[bytes]) -> None:
    if not matches(presented(request.headers.get("authorization")), accepted):
        raise HTTPException(401, "a valid token is needed (Bearer, or Basic with the token "
                                 "as the password)", headers={"WWW-Authenticate": CHALLENGE})


# async: FastAPI runs a plain `def` dependency in its thread pool, a hand-over per
# request that made the statistics, answered from memory, cost twice GET /healthz.
async def require_analyst(request: Request) -> None:
    """The analyst token or the admin token."""
    _require(request, request.app.state.tokens.readers)


async def require_admin(request: Request) -> None:
    """The admin token only."""
    _require(request, request.app.state.tokens.admins)


Analyst = Annotated[None, Depends(require_analyst)]
Admin = Annotated[None, Depends(require_admin)]


class Tokens:
    """The accepted tokens, as bytes, read once from the settings."""

    def __init__(self, admin: str, analyst: str) -> None:
        self.admins: tuple[bytes, ...] = (admin.encode(),)
        self.readers: tuple[bytes, ...] = (analyst.encode(), admin.encode())
