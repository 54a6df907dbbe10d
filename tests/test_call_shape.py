"""Every public analysis has one call shape, ``analysis(model, data, *, options) -> XResult``, and
every solver ``solver(operator, *, options)``; every result carries the shared header."""

from __future__ import annotations

import dataclasses
import inspect

import vitprobe
from vitprobe.result import Result

LOADERS = {"load_model", "load_data", "as_loaded"}
SOLVERS = {"eigenpairs", "trace_estimate", "spectral_density"}


def _functions() -> dict[str, object]:
    return {name: getattr(vitprobe, name) for name in vitprobe.__all__
            if inspect.isfunction(getattr(vitprobe, name))}


def test_every_analysis_is_model_data_then_keyword_options() -> None:
    analyses = {n: f for n, f in _functions().items() if n not in LOADERS | SOLVERS}
    assert len(analyses) >= 16
    for name, function in analyses.items():
        parameters = list(inspect.signature(function).parameters.values())
        assert [p.name for p in parameters[:2]] == ["model", "data"], name
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters[:2]), name
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[2:]), name
        inner = inspect.unwrap(function)
        returned = inner.__globals__[inspect.signature(inner).return_annotation]
        assert issubclass(returned, Result) and returned.__name__.endswith("Result"), name
        header = {f.name for f in dataclasses.fields(returned)}
        assert {"model", "images", "seconds", "options"} <= header, name
        assert set(returned.INDEX) <= set(returned.columns()) and returned.INDEX[0] == "metric", name


def test_every_solver_takes_an_operator_then_keyword_options() -> None:
    for name in SOLVERS:
        parameters = list(inspect.signature(getattr(vitprobe, name)).parameters.values())
        assert parameters[0].name == "operator", name
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[1:]), name


def test_one_vocabulary_for_the_options() -> None:
    names = {p for f in _functions().values() for p in inspect.signature(f).parameters}
    # the words the issue found in several spellings have one each
    assert not names & {"topk", "num_samples", "num_vectors", "n_steps", "images", "trace_samples"}


def test_the_header_is_filled_in(tiny_vit) -> None:
    import torch

    result = vitprobe.attention_rollout(tiny_vit, torch.randn(2, 3, 16, 16), discard_ratio=0.5)
    assert result.images == 2 and result.seconds > 0
    assert result.options["discard_ratio"] == 0.5 and result.options["head_fusion"] == "mean"
    frame = result.to_frame()
    assert frame.attrs["index"] == ["metric", "source", "target_layer"]
    assert {"images", "seconds"} <= set(frame.columns)
