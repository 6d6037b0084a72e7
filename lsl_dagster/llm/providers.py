"""Which providers exist: the model string's prefix picks one. The sim (a test double) is one of them, and
this is the one place outside `lsl_dagster.sim` that knows it exists."""

from __future__ import annotations

from lsl_dagster.llm.http import HttpProvider
from lsl_dagster.llm.provider import Provider
from lsl_dagster.sim.provider import SimProvider
from lsl_dagster.spec.experiment import FAMILIES

PROVIDERS: dict[str, Provider] = {"sim": SimProvider(), **{name: HttpProvider() for name in FAMILIES}}
