"""An experiment's spec hash is its data version: settings added later must not make old outputs stale."""

from __future__ import annotations

import pytest

from lsl_dagster.spec.experiment_files import campaigns, load_experiment
from lsl_dagster_tests.conftest import PROJECT

DATA = PROJECT / "data"
# The hashes of the shipped experiments before constrained outputs and Stage 2's probe existed.
EARLIER = {
    "arith-sim-01": "9c7d31bd32e76075",
    "hop-qa-sim-01": "361f66120d388089",
    "reviews-sim-01": "0132e20472d068c9",
    # Re-pinned when the file itself changed (stage2.on_no_signal: warn), not the schema.
    "grid-sim-01--arithmetic--large-small--miprov2--s0": "8a37f5e90b6f826e",
    "hop-qa-seeds--hop_qa--large-small--miprov2--s0": "42967f138e96440e",
}


def _spec(experiment_id: str):
    cells = {e: s for _, specs in campaigns(DATA).values() for e, s in specs.items()}
    return cells[experiment_id] if experiment_id in cells else load_experiment(DATA, experiment_id)


@pytest.mark.parametrize("experiment_id", sorted(EARLIER))
def test_shipped_experiments_keep_their_hash(experiment_id: str):
    assert _spec(experiment_id).spec_hash == EARLIER[experiment_id]


@pytest.mark.parametrize(
    ("section", "update"),
    [
        ("small_model", {"structured_outputs": True, "adapter": "json"}),
        ("small_model", {"adapter": "two_step"}),
        ("stage2", {"on_no_signal": "warn"}),
        ("stage2", {"probe_examples": 4}),
    ],
)
def test_a_later_setting_counts_once_it_is_set(section: str, update: dict):
    spec = _spec("arith-sim-01")
    changed = spec.model_copy(update={section: getattr(spec, section).model_copy(update=update)})
    assert changed.spec_hash != spec.spec_hash
