"""Studies: recipes that run several analyses into one folder, wide reports, the demo."""

from vitprobe.studies.pivot import WideTable, pivot, read_runs
from vitprobe.studies.recipe import Recipe, RecipeError, parse_recipe
from vitprobe.studies.runner import Outcome, run_recipe

__all__ = ["Outcome", "Recipe", "RecipeError", "WideTable", "parse_recipe", "pivot", "read_runs",
           "run_recipe"]
