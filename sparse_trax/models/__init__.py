"""Models: functions returning layers. Every argument is gin-bindable."""

from sparse_trax.models.scaling import ScalingTransformer
from sparse_trax.models.scaling import ScalingTransformerLM
from sparse_trax.models.terraformer import Terraformer
from sparse_trax.models.terraformer import TerraformerLM
from sparse_trax.models.transformer import Transformer
from sparse_trax.models.transformer import TransformerLM
