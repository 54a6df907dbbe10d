"""The ImageNet-C corruptions (Hendrycks & Dietterich 2019) through the ``imagecorruptions``
package (Michaelis et al. 2019), which packages Hendrycks' own corruption code.

imagecorruptions 1.1.2, the current release, predates three changes of its dependencies; this
module bridges them without touching its code, so that all 15 corruptions run:

- it imports ``pkg_resources``, which setuptools dropped: where it is missing, a stand-in
  module gives ``resource_filename`` (the frost images beside the module's source) for the
  import only, so that nothing else (pytest, for one) mistakes it for setuptools';
- ``glass_blur`` calls scikit-image's ``gaussian(..., multichannel=True)``, removed in
  scikit-image 0.19: the module's ``gaussian`` is wrapped to pass ``channel_axis=-1``;
- ``fog`` uses ``np.float_``, removed in NumPy 2: the module sees a NumPy whose ``float_`` is
  ``float64``, NumPy itself is left alone.

The corruptions draw from NumPy's global random state; :func:`corrupt_images` seeds it per call,
so a run is reproducible, and restores it afterwards.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from vitprobe.errors import UserError

# the 15 corruptions of the ImageNet-C benchmark, in the paper's order (noise, blur, weather,
# digital); imagecorruptions' four validation corruptions are not part of mCE
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)


class _NumpyWithFloat(types.ModuleType):
    """NumPy as one module sees it: every attribute, plus ``float_`` (NumPy 1's float64)."""

    def __getattr__(self, name: str):
        return np.float64 if name == "float_" else getattr(np, name)


def _gaussian_with_channel_axis(gaussian):
    def wrapped(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs.setdefault("channel_axis", -1)
        return gaussian(image, *args, **kwargs)
    return wrapped


def _resource_filename(module: str, path: str) -> str:
    """pkg_resources' ``resource_filename`` for a file beside an imported module's source."""
    source = sys.modules[module].__file__
    if source is None:
        raise FileNotFoundError(f"{module} has no source file to find {path} beside")
    return str(Path(source).parent / path)


@cache
def bridged_corrupt():
    """imagecorruptions' own ``corrupt(image, severity, corruption_name)``, its module bridged to
    today's dependencies (import it through here: a plain import fails without pkg_resources)."""
    stand_in: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pkg_resources' deprecation notice
        try:
            importlib.import_module("pkg_resources")  # imagecorruptions imports it
        except ImportError:
            stand_in = types.ModuleType("pkg_resources")
            stand_in.resource_filename = _resource_filename
            sys.modules["pkg_resources"] = stand_in
        try:
            from imagecorruptions import corrupt, corruptions
        finally:  # imagecorruptions has bound resource_filename: the stand-in must not outlive it
            if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
                del sys.modules["pkg_resources"]
    corruptions.gaussian = _gaussian_with_channel_axis(corruptions.gaussian)
    if not hasattr(np, "float_"):
        corruptions.np = _NumpyWithFloat("numpy")
    return corrupt


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``images`` (N, H, W, 3) uint8, each corrupted by imagecorruptions' ``corruption`` at
    ``severity`` (1-5), with NumPy's global random state seeded by ``seed`` for the call."""
    if corruption not in CORRUPTIONS:
        raise UserError(f"unknown corruption {corruption!r}; the ImageNet-C corruptions: "
                        f"{', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"severity must be 1 to 5, got {severity}")
    if min(images.shape[1:3]) < 32:
        raise UserError(f"the ImageNet-C corruptions need images of at least 32x32 pixels, got "
                        f"{images.shape[1]}x{images.shape[2]}")
    corrupt = bridged_corrupt()
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = [corrupt(image, severity=severity, corruption_name=corruption) for image in images]
    finally:
        np.random.set_state(state)
    return np.stack(out)
