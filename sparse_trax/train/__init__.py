"""sparse_trax.train: optimizers, schedules, checkpoints and the training loop."""

from sparse_trax.train import checkpoints
from sparse_trax.train import optimizers
from sparse_trax.train.checkpoints import load_weights
from sparse_trax.train.loop import Loop
from sparse_trax.train.loop import TrainConfig
from sparse_trax.train.loop import train
