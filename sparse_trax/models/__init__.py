"""Models: functions returning layers. Every argument is gin-bindable."""

from sparse_trax.models.transformer import Transformer
from sparse_trax.models.transformer import TransformerEncoder
from sparse_trax.models.transformer import TransformerLM
