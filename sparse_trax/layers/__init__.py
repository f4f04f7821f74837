"""sparse_trax.layers: pure layers and combinators (`import sparse_trax.layers as tl`).

Nothing here imports TensorFlow or gin.
"""

from sparse_trax.layers.attention import Attention
from sparse_trax.layers.attention import CausalAttention
from sparse_trax.layers.attention import EncDecAttention
from sparse_trax.layers.attention import causal_mask
from sparse_trax.layers.attention import dot_product_attention
from sparse_trax.layers.base import Layer
from sparse_trax.layers.base import LayerError
from sparse_trax.layers.base import MODES
from sparse_trax.layers.combinators import Add
from sparse_trax.layers.combinators import Branch
from sparse_trax.layers.combinators import Cache
from sparse_trax.layers.combinators import Chunk
from sparse_trax.layers.combinators import Concatenate
from sparse_trax.layers.combinators import Cond
from sparse_trax.layers.combinators import Drop
from sparse_trax.layers.combinators import Dup
from sparse_trax.layers.combinators import Fn
from sparse_trax.layers.combinators import Parallel
from sparse_trax.layers.combinators import Residual
from sparse_trax.layers.combinators import Scan
from sparse_trax.layers.combinators import Select
from sparse_trax.layers.combinators import Serial
from sparse_trax.layers.combinators import Swap
from sparse_trax.layers.core import ArgMax
from sparse_trax.layers.core import Dense
from sparse_trax.layers.core import Dropout
from sparse_trax.layers.core import Embedding
from sparse_trax.layers.core import Gelu
from sparse_trax.layers.core import LayerNorm
from sparse_trax.layers.core import LogSoftmax
from sparse_trax.layers.core import Mean
from sparse_trax.layers.core import PaddingMask
from sparse_trax.layers.core import PositionalEncoding
from sparse_trax.layers.core import Relu
from sparse_trax.layers.core import ShiftRight
from sparse_trax.layers.core import Sigmoid
from sparse_trax.layers.core import Tanh
from sparse_trax.layers.losses import Accuracy
from sparse_trax.layers.losses import CrossEntropyLoss
from sparse_trax.layers.losses import SequenceAccuracy
from sparse_trax.layers.losses import sequence_accuracy
from sparse_trax.layers.losses import weighted_accuracy
from sparse_trax.layers.losses import weighted_cross_entropy
from sparse_trax.layers.summary import count_parameters
from sparse_trax.layers.summary import named_weights
from sparse_trax.layers.summary import summary
