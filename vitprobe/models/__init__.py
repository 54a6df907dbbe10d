"""Models: ``load_model(spec) -> LoadedModel``, checkpoint formats and the embedded demo zoo."""

from vitprobe.models.input_config import InputOverrides
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.specs import SPEC_FORMS, load_model

__all__ = ["InputOverrides", "LoadedModel", "SPEC_FORMS", "as_loaded", "load_model"]
