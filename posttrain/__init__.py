"""posttrain: turn a pre-trained language model into an assistant from one recipe.

The Python API (posttrain/api.py; docs/python-api.md): `posttrain.run`, `posttrain.plan`,
`posttrain.load` (validate a recipe) and `posttrain.compare`. Importing posttrain is light:
the training libraries load when a stage runs.
"""

from posttrain.api import compare, load, plan, run

__all__ = ["compare", "load", "plan", "run"]
