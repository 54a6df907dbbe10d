"""The figure of a result whose command draws none: its values as bars, with their intervals."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # as every figure module: figures go to files, no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def value_bars(frame: pd.DataFrame, title: str = "") -> Figure:
    """One horizontal bar per row of a tidy table (``metric`` and its other index columns make
    the label), with ``ci_low``..``ci_high`` or +-``std_error`` as error bars where given."""
    index = [c for c in frame.attrs.get("index", ["metric"]) if c in frame.columns]
    labels = [", ".join(f"{row[c]}" if c == "metric" else f"{c}={row[c]}" for c in index if pd.notna(row[c]))
              for _, row in frame.iterrows()]
    values = frame["value"].to_numpy(dtype=float)
    errors = None
    if {"ci_low", "ci_high"} <= set(frame.columns):
        low, high = frame["ci_low"].to_numpy(dtype=float), frame["ci_high"].to_numpy(dtype=float)
        errors = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0)
    elif "std_error" in frame.columns:
        errors = np.nan_to_num(frame["std_error"].to_numpy(dtype=float), nan=0.0)
    figure, axis = plt.subplots(figsize=(6.4, 0.9 + 0.28 * len(values)))
    axis.barh(np.arange(len(values)), values, xerr=errors, color="#4c72b0", capsize=2)
    axis.set_yticks(np.arange(len(values)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="value", title=title)
    figure.tight_layout()
    return figure
