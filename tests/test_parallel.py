"""Data-parallel training over 8 (simulated CPU) devices equals one device; checkpoint
checksums do not depend on the sharding."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sparse_trax.train import parallel
from test_trainer import REPO, text_files, tiny_config  # pylint: disable=unused-import

# Runs in a fresh interpreter: the device count is fixed when jax starts.
SCRIPT = '''
import json, os, sys
import gin
import jax
from sparse_trax import trainer
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from sparse_trax.train import checksums
assert jax.device_count() == 8, jax.devices()
# A checkpoint checksum is the same for an array whole and sharded over devices.
mesh = jax.make_mesh((4, 2), ('a', 'b'))
whole = np.arange(8 * 4 * 2, dtype=np.float32).reshape(8, 4, 2)
for spec in [(), ('a',), ('a', 'b'), (None, 'b'), ('b', 'a', None)]:
  placed = jax.device_put(whole, NamedSharding(mesh, PartitionSpec(*spec)))
  assert checksums.tree_checksum([placed]) == checksums.tree_checksum([whole]), spec
config, out = sys.argv[1], sys.argv[2]
for name, bindings in [('one', ['train.n_devices = 1']),
                       ('eight', ['train.n_devices = 8']),
                       ('sharded', ['train.n_devices = 8', "train.weight_sharding = 'sharded'"])]:
  gin.clear_config()
  args = ['--config_file', config, '--output_dir', os.path.join(out, name)]
  for binding in bindings:
    args += ['--config', binding]
  trainer.main(args)
'''


def _losses(folder):
  with open(os.path.join(folder, 'metrics.jsonl'), encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  return ([r['loss'] for r in records if 'loss' in r],
          [r['eval_loss'] for r in records if 'eval_loss' in r])


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files, n_steps=4, eval_every=2, checkpoint_every=4,
                       decode_length=0)
  with open(config, 'a', encoding='utf-8') as f:
    f.write('Inputs.batch_size = 8\n')
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                   '--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', SCRIPT, config, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Training data-parallel on 8 devices' in result.stdout
  one_train, one_eval = _losses(tmp_path / 'one')
  assert len(one_train) == 4 and len(one_eval) == 2
  for name in ('eight', 'sharded'):
    train_losses, eval_losses = _losses(tmp_path / name)
    np.testing.assert_allclose(train_losses, one_train, rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(eval_losses, one_eval, rtol=2e-5, err_msg=name)


def test_placement_rejects_bad_settings_and_shards_the_largest_axis():
  with pytest.raises(ValueError, match='weight_sharding'):
    parallel.Placement(weight_sharding='fsdp')
  with pytest.raises(ValueError, match='n_devices'):
    parallel.Placement(n_devices=jax.device_count() + 1)
  placement = parallel.Placement(1, 'sharded')
  assert placement.weight_sharding_of(np.zeros((3, 4))) == placement.replicated
  batch = placement.batch({'targets': np.ones((2, 5), np.int32)})
  assert batch['targets'].shape == (2, 5)


def test_host_flags_go_together_and_default_to_one_host():
  from sparse_trax import trainer  # pylint: disable=import-outside-toplevel
  args = trainer.parse_args(['--config_file', 'x.gin', '--output_dir', '/tmp/x'])
  assert not args.distributed and args.coordinator_address is None
  with pytest.raises(SystemExit):
    trainer.parse_args(['--config_file', 'x.gin', '--output_dir', '/tmp/x',
                        '--coordinator_address', 'localhost:1234'])
  args = trainer.parse_args(['--config_file', 'x.gin', '--output_dir', '/tmp/x',
                             '--coordinator_address', 'h:1', '--num_processes', '2',
                             '--process_id', '1'])
  assert (args.coordinator_address, args.num_processes, args.process_id) == ('h:1', 2, 1)
