"""sparse_trax.data: sources, tokenizers and batching. The only place TensorFlow is used.

Needs the `train` extra (`pip install 'sparse_trax[train]'`). Importing it does not
import TensorFlow: the first dataset built does (`tf_setup`, quietly).
"""

from sparse_trax import extras

extras.require('sparse_trax.data', extras.TRAIN_MODULES, 'train')

# pylint: disable=wrong-import-position

from sparse_trax.data.pipeline import Inputs
from sparse_trax.data.sources import AdditionTask
from sparse_trax.data.sources import CopyTask
from sparse_trax.data.sources import ShippedCorpus
from sparse_trax.data.sources import TextFiles
from sparse_trax.data.sources import TFDSSource
from sparse_trax.data.sources import default_data_dir
from sparse_trax.data.corruption import SpanCorruption
from sparse_trax.data.corruption import span_corruption
from sparse_trax.data.tokenizers import ByteTokenizer
from sparse_trax.data.tokenizers import SentencePieceTokenizer
