"""DSPy's optimizers behind one interface (base.Optimizer), sized to a call budget, one module each.

A new optimizer is one module with an Optimizer subclass and one entry in OPTIMIZERS; run.run_optimizer
runs any of them within a stage's meter, stopping cleanly with the best candidate when the budget runs out.
"""

from lsl_dagster.method.optimizers.base import Optimizer
from lsl_dagster.method.optimizers.bootstrap_rs import BootstrapRandomSearch
from lsl_dagster.method.optimizers.gepa import GEPA
from lsl_dagster.method.optimizers.miprov2 import MIPROv2
from lsl_dagster.method.optimizers.simba import SIMBA

# The names experiment and campaign files use (spec.experiment.Optimizer).
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "miprov2": MIPROv2,
    "bootstrap_rs": BootstrapRandomSearch,
    "gepa": GEPA,
    "simba": SIMBA,
}
