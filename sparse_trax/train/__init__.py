"""sparse_trax.train: optimizers, schedules, checkpoints and the training loop.

Needs the `train` extra (`pip install 'sparse_trax[train]'`).
"""

from sparse_trax import extras

extras.require('sparse_trax.train', ('optax', 'orbax', 'rouge_score'), 'train')

# pylint: disable=wrong-import-position

from sparse_trax.train import checkpoints
from sparse_trax.train import optimizers
from sparse_trax.train.checkpoints import load_weights
from sparse_trax.train.loop import Loop
from sparse_trax.train.loop import TrainConfig
from sparse_trax.train.loop import train
