"""World models behind one protocol (see :mod:`world_models.base`). Imports torch and numpy only."""
