"""Models: ``load_model(spec) -> LoadedModel``, checkpoint formats and the embedded demo zoo."""

from vitprobe.models.loaded import LoadedModel, as_loaded, detect_family
from vitprobe.models.specs import SPEC_FORMS, load_model

__all__ = ["LoadedModel", "SPEC_FORMS", "as_loaded", "detect_family", "load_model"]
