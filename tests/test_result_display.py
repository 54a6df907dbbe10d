"""Every result displays in a notebook: ``plot()`` returns a matplotlib figure with something drawn
on it (the figure its command draws, or its values as bars), and ``_repr_html_`` shows its tidy
table. Every analysis of ``vitprobe.__all__`` is run once, on the demo zoo, with few images."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import vitprobe

SOLVERS_AND_LOADERS = {"load_model", "load_data", "as_loaded", "eigenpairs", "trace_estimate", "spectral_density"}


@pytest.fixture(scope="module")
def zoo():
    vit, resnet = vitprobe.load_model("demo:vit"), vitprobe.load_model("demo:resnet")
    data = {name: vitprobe.load_data("shapes", model, num_images=8, batch_size=8)
            for name, model in (("vit", vit), ("resnet", resnet))}
    return {"vit": vit, "resnet": resnet}, data


@pytest.fixture(scope="module")
def results(zoo):
    models, data = zoo
    vit, resnet = models["vit"], models["resnet"]
    quick = {"max_iter": 4}
    maps = vitprobe.attention_rollout(vit, data["vit"])
    return {
        "adaptive_sharpness": vitprobe.adaptive_sharpness(vit, data["vit"], rho=[1e-3, 2e-3], m=4, steps=2),
        "attention_maps": vitprobe.attention_maps(vit, data["vit"], layers=[0]),
        "attention_rollout": maps,
        "attributions": vitprobe.attributions(resnet, data["resnet"]),
        "block_spectrum": vitprobe.block_spectrum(vit, data["vit"], blocks=["blocks.3"], **quick),
        "corruption_accuracy": vitprobe.corruption_accuracy(vit, data["vit"], corruptions=["contrast"], severities=[1]),
        "effective_receptive_field": vitprobe.effective_receptive_field(resnet, data["resnet"]),
        "evaluate": vitprobe.evaluate(vit, data["vit"]),
        "feature_frequency": vitprobe.feature_frequency(vit, data["vit"]),
        "gradient_rollout": vitprobe.gradient_rollout(vit, data["vit"]),
        "hessian_density": vitprobe.hessian_density(vit, data["vit"], num_probes=1, max_iter=6),
        "hessian_spectrum": vitprobe.hessian_spectrum(vit, data["vit"], k=2, **quick),
        "hessian_trace": vitprobe.hessian_trace(vit, data["vit"], num_probes=6),
        "keskar_sharpness": vitprobe.keskar_sharpness(vit, data["vit"], **quick),
        "layer_similarity": vitprobe.layer_similarity(vit, data["vit"]),
        "loss_landscape": vitprobe.loss_landscape(vit, data["vit"], grid=(3, 3)),
        "map_quality": vitprobe.map_quality(vit, data["vit"], maps=maps, steps=2),
        "mean_attention_distance": vitprobe.mean_attention_distance(vit, data["vit"]),
        "measure_throughput": vitprobe.measure_throughput(vit, None, batch_size=2, steps=1, warmup=0),
        "sam_sharpness": vitprobe.sam_sharpness(vit, data["vit"]),
        "sharpness_subsets": vitprobe.sharpness_subsets(vit, data["vit"], subsets=2, tol=1e-1),
        "theoretical_receptive_field": vitprobe.theoretical_receptive_field(resnet, None, layer=["layer1", "layer4"]),
    }


def test_every_result_plots_and_shows_its_table(results) -> None:
    analyses = {name for name in vitprobe.__all__ if inspect.isfunction(getattr(vitprobe, name))}
    assert set(results) == analyses - SOLVERS_AND_LOADERS  # every analysis is here
    for name, result in results.items():
        figure = result.plot()
        assert isinstance(figure, Figure), name
        drawn = [a for a in figure.axes if a.has_data() or a.images or a.collections]
        assert drawn, f"{name}: an empty figure"
        html = result._repr_html_()
        frame = result.to_frame()
        assert html.startswith("<table") and all(str(m) in html for m in pd.unique(frame["metric"])), name
        assert f"{frame['value'].iloc[0]:.4g}" in html or not np.isfinite(frame["value"].iloc[0]), name


def test_the_bars_of_a_result_without_a_command_figure_show_its_values(results) -> None:
    """The fallback figure's bars are the table's values."""
    trace = results["hessian_trace"]
    bars = [patch.get_width() for patch in trace.plot().axes[0].patches]
    assert bars == pytest.approx(trace.to_frame()["value"].tolist())
