"""Plots stay readable for any scores: every value label contrasts with what it is drawn on."""

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from lsl_dagster.results.plots import BAR, contrast, label_bars, text_color


@pytest.mark.parametrize("scores", [[0.0, 0.0, 0.0], [0.0, 0.05, 0.7], [1.0, 0.11, 0.12], [0.5, 1.0, 0.0]])
def test_bar_labels_contrast_with_their_background(scores):
    ax = Figure().subplots()
    bars = ax.bar(["baseline", "lsl", "budget_matched"], scores, color=BAR)
    label_bars(ax, bars, scores, tops=[s + 0.05 for s in scores])
    assert len(ax.texts) == 3
    for text, bar, score in zip(ax.texts, bars, scores, strict=True):
        assert text.get_text() == f"{score:.3f}"
        y = text.xy[1]
        inside = 0 <= y < bar.get_height()
        background = bar.get_facecolor() if inside else ax.get_facecolor()
        assert contrast(text.get_color(), background) >= 4.5, (score, text.get_color())
        if score == 0.0:
            assert not inside and y >= score  # nothing to be white on: the label goes above


def test_heat_map_text_contrasts_with_every_cell_colour():
    cmap, norm = colormaps["RdBu"], Normalize(-0.3, 0.3)
    for value in np.linspace(-0.3, 0.3, 61):
        background = cmap(norm(value))
        assert contrast(text_color(background), background) >= 4.5, value
    assert text_color(cmap(0.0)) == "white" and text_color(cmap(0.5)) == "black"
