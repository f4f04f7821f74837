"""sparse_trax: Trax-style layers on modern JAX for Scaling Transformers and Terraformer."""

__version__ = '0.1.0'
