"""The command line: discovery of every command, shared options, argument rewriting."""

from __future__ import annotations

import pytest

from vitprobe.cli import attach_negative_values, build_parser, discover_commands


def test_every_analysis_command_is_discovered():
    names = set(discover_commands())
    assert {"sharpness", "attention", "receptive-field", "landscape", "evaluate", "throughput",
            "run", "report", "demo", "models"} <= names


def test_negative_ranges_are_values_not_options():
    argv = attach_negative_values(["landscape", "--span", "-1:1", "--seed", "-3", "--layers", "-1", "-2"])
    assert argv == ["landscape", "--span=-1:1", "--seed", "-3", "--layers", "-1", "-2"]
    args = build_parser(discover_commands()).parse_args(
        attach_negative_values(["landscape", "--span", "-0.5:1.5", "--beta-span", "-1e-2:1e-2"]))
    assert args.span is not None and args.beta_span is not None


def test_shared_options_on_every_model_command():
    parser = build_parser(discover_commands())
    args = parser.parse_args(["sharpness", "--model", "demo:vit", "--model", "demo:resnet",
                              "--num-images", "8", "--device", "cpu", "--quiet"])
    assert args.model == ["demo:vit", "demo:resnet"] and args.num_images == 8 and args.quiet
    with pytest.raises(SystemExit):
        parser.parse_args(["sharpness", "--device", "tpu"])
