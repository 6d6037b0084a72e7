"""What every file schema and record is built on: strict frozen models and safe slugs."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")


def check_slug(value: str) -> str:
    """Experiment ids become path components and partition keys: only a safe slug is accepted."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a safe experiment id: use 1-64 characters of a-z, 0-9, '-' and '_', "
            "starting and ending with a letter or digit (no '/', '..', spaces or upper case)"
        )
    return value


Slug = Annotated[str, AfterValidator(check_slug)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
