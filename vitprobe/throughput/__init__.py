"""Inference throughput, measured as timm's benchmark does."""

from vitprobe.throughput.measure import ThroughputResult, measure_throughput

__all__ = ["ThroughputResult", "measure_throughput"]
