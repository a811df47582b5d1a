"""What every service's settings share: the log level, and how a bad environment is reported.

Each service has one `BaseSettings` class whose fields are its environment variables;
its entry point reads it with `load_settings`, nothing reads it at import time.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

S = TypeVar("S", bound=BaseModel)


def upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(upper)
]


def describe(exc: ValidationError, settings: type[BaseModel]) -> str:
    """`NAME: what is wrong; ...`, by environment variable, never echoing a value.

    A value may be a secret (a token, a password), and this line goes to the log.
    """
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        info = settings.model_fields.get(loc[0]) if loc else None
        aliases = getattr(info.validation_alias, "choices", ()) if info else ()
        name = str(aliases[0]) if aliases else ".".join(loc).upper() or "?"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)


def load_settings(cls: type[S], service: str) -> S:
    """The settings from the environment, or exit saying which variables are wrong."""
    try:
        return cls()
    except ValidationError as exc:
        sys.exit(f"{service}: invalid settings: {describe(exc, cls)}")
