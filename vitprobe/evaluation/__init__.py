"""Accuracy, loss and calibration with confidence intervals."""

from vitprobe.evaluation.calibration import expected_calibration_error, reliability_table
from vitprobe.evaluation.evaluate import EvaluationResult, evaluate
from vitprobe.evaluation.figures import reliability_figure
from vitprobe.evaluation.intervals import bootstrap_interval, wilson_interval

__all__ = ["EvaluationResult", "bootstrap_interval", "evaluate", "expected_calibration_error",
           "reliability_figure", "reliability_table", "wilson_interval"]
