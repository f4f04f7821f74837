"""Bridges from other libraries: `sparse_trax.compat.trax` reads Trax 1.4.1 checkpoints."""
