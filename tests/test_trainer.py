"""The trainer end to end: tiny configs in seconds, resume, failures."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

from sparse_trax import experiment, trainer
from sparse_trax.data import corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def text_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('corpus')
  paragraphs = corpus.kjv_paragraphs()
  (folder / 'train.txt').write_text('\n'.join(paragraphs[:200]), encoding='utf-8')
  (folder / 'eval.txt').write_text('\n'.join(paragraphs[200:210]), encoding='utf-8')
  return str(folder / 'train.txt'), str(folder / 'eval.txt')


def tiny_config(folder, text_files, **bindings):
  """A gin file: a tiny LM on local text files, bytes, a few steps."""
  settings = dict(n_steps=12, eval_every=6, checkpoint_every=4, log_every=1, decode_length=4)
  settings.update(bindings)
  lines = [f"include '{REPO}/gin/models/transformer_lm.gin'",
           f"include '{REPO}/gin/optimizers/adam.gin'",
           f"include '{REPO}/gin/data/text_files.gin'",
           'D_MODEL = 16', 'D_FF = 32', 'N_LAYERS = 1', 'N_HEADS = 2', 'MAX_LEN = 64',
           'DROPOUT = 0.1',
           'Inputs.tokenizer = @ByteTokenizer()', 'Inputs.max_length = 16',
           'Inputs.batch_size = 4', 'Inputs.n_eval_batches = 2',
           f"TextFiles.train_files = ['{text_files[0]}']",
           f"TextFiles.eval_files = ['{text_files[1]}']"]
  lines += [f'train.{k} = {v!r}' for k, v in settings.items()]
  path = os.path.join(folder, 'tiny.gin')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def run_trainer(*args):
  gin.clear_config()
  try:
    return trainer.main(list(args))
  finally:
    gin.clear_config()


def run_config(gin_file, output_dir, bindings):
  """Runs the trainer on gin/<gin_file> with extra bindings."""
  args = ['--config_file', os.path.join(REPO, 'gin', gin_file), '--output_dir', output_dir]
  for binding in bindings:
    args += ['--config', binding]
  return run_trainer(*args)


def read_metrics(output_dir):
  with open(os.path.join(output_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def train_losses(output_dir):
  """Step -> loss; a resumed run's later record for a step wins."""
  return {r['step']: r['loss'] for r in read_metrics(output_dir) if 'loss' in r}


def test_end_to_end_tiny_run(tmp_path, text_files, capsys):
  config = tiny_config(str(tmp_path), text_files)
  out = str(tmp_path / 'run')
  result = run_trainer('--config_file', config, '--output_dir', out)
  captured = capsys.readouterr()
  printed = captured.out
  assert 'Decoded sample' in printed and 'unigram baseline' in printed
  # Not a terminal: plain progress lines, no tqdm bar redrawn with carriage returns.
  assert re.search(r'^step 12: loss \d+\.\d{4}, [\d,]+ tokens/s$', printed, re.M), printed
  assert '\r' not in captured.err and 'training:' not in captured.err
  assert np.isfinite(result['eval_log_perplexity']) and 'sample' in result
  records = read_metrics(out)
  assert sorted(train_losses(out)) == list(range(1, 13))
  evals = [r for r in records if 'eval_loss' in r]
  assert [r['step'] for r in evals] == [6, 12]
  assert all('tokens_per_s' in r for r in records if 'loss' in r)
  assert sorted(os.listdir(os.path.join(out, 'checkpoints'))) == ['12', '4', '8']
  operative = open(os.path.join(out, 'config.gin'), encoding='utf-8').read()
  assert 'D_MODEL = 16' in operative and 'TransformerLM.d_model = %D_MODEL' in operative
  assert 'train.n_steps = 12' in operative


def test_command_line_binding_overrides_file(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files)
  out = str(tmp_path / 'run')
  run_trainer('--config_file', config, '--output_dir', out,
              '--config', 'train.n_steps = 3', '--config', 'train.decode_length = 0')
  assert sorted(train_losses(out)) == [1, 2, 3]


def test_rerun_after_finish_resumes_and_trains_further(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files, decode_length=0, eval_every=100)
  out = str(tmp_path / 'run')
  run_trainer('--config_file', config, '--output_dir', out, '--config', 'train.n_steps = 8')
  run_trainer('--config_file', config, '--output_dir', out, '--config', 'train.n_steps = 12')
  reference = str(tmp_path / 'reference')
  run_trainer('--config_file', config, '--output_dir', reference)
  resumed, straight = train_losses(out), train_losses(reference)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_array_equal([resumed[s] for s in range(1, 13)],
                                [straight[s] for s in range(1, 13)])


def _loss_records(output_dir):
  path = os.path.join(output_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    return sum('"loss"' in line for line in f)


def _signal_when(process, output_dir, records, signum):
  """Sends `signum` once metrics.jsonl holds `records` loss records; returns the exit status."""
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if _loss_records(output_dir) >= records:
      break
    time.sleep(0.02)
  process.send_signal(signum)
  return process.wait(timeout=120)


def _log_lines(stderr):
  """stderr's lines (TensorFlow's start-up notes are dropped by the trainer: #26)."""
  return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_killed_interrupted_damaged_run_resumes_equal_to_uninterrupted(tmp_path, text_files,
                                                                       capsys):
  """One run, against an uninterrupted reference: SIGKILL (resumes from the last
  checkpoint), a second trainer refused while the first runs, Ctrl-C (SIGINT: saves at
  the step reached, exit 130, one line), a truncated file in the newest
  checkpoint (a few lines, the older one used): every step's loss equals the reference.
  (SIGTERM takes the same path in the Loop: test_runs.py checks it in this process.)"""
  steps = 45
  config = tiny_config(str(tmp_path), text_files, n_steps=steps, eval_every=1000,
                       checkpoint_every=7, decode_length=0, progress_bar=False)
  temp = tmp_path / 'tmp'           # the system temp folder, as the trainers see it
  temp.mkdir()
  env = dict(os.environ, JAX_PLATFORMS='cpu', TMPDIR=str(temp))
  command = [sys.executable, '-m', 'sparse_trax.trainer', '--config_file', config,
             '--output_dir']
  run_dir = str(tmp_path / 'run')
  reference_dir = str(tmp_path / 'reference')
  start = lambda: subprocess.Popen(command + [run_dir], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
  # The uninterrupted reference runs meanwhile, in its own process.
  reference = subprocess.Popen(command + [reference_dir], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
  process = start()
  _signal_when(process, run_dir, 15, signal.SIGKILL)
  killed_at = max(train_losses(run_dir))
  assert 15 <= killed_at < steps, 'the kill must land mid-training'

  process = start()
  deadline = time.time() + 120
  while _loss_records(run_dir) <= killed_at and time.time() < deadline:
    time.sleep(0.02)           # (the resumed run truncated metrics.jsonl and goes on)
  gin.clear_config()
  refused = trainer.console_main(['--config_file', config, '--output_dir', run_dir])
  gin.clear_config()
  assert refused == 1
  assert f'is in use by another trainer: pid {process.pid} on host' in capsys.readouterr().err
  assert _signal_when(process, run_dir, 30, signal.SIGINT) == 130
  last = _log_lines(process.stderr.read())[-1]
  match = re.fullmatch(r'trainer: interrupted \(SIGINT\) at step (\d+); checkpoint saved: '
                       r'(\S+); rerun the same command to resume', last)
  assert match, last
  interrupted_at = int(match.group(1))
  assert 30 <= interrupted_at < steps
  assert match.group(2) == os.path.join(run_dir, 'checkpoints', str(interrupted_at))
  assert max(train_losses(run_dir)) == interrupted_at      # nothing lost, nothing past it

  # Damage the newest checkpoint: the rerun says so in a few lines and uses the one before.
  checkpoints_dir = os.path.join(run_dir, 'checkpoints')
  newest = os.path.join(checkpoints_dir, str(interrupted_at))
  victim = max((os.path.join(root, name) for root, _, names in os.walk(newest)
                for name in names), key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)
  finished = subprocess.run(command + [run_dir], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, check=True)
  lines = _log_lines(finished.stderr)
  assert len(lines) <= 10, lines
  assert not any(note in finished.stderr for note in ('oneDNN', 'cuInit', 'cuda drivers'))
  assert any(f'checkpoints/{interrupted_at}: ' in line and 'truncated' in line and
             'checkpoints_corrupt' in line and 'using step ' in line for line in lines), lines
  assert reference.wait(timeout=300) == 0
  # Nothing left in the temp folder but the private folder of the SIGKILLed trainer.
  left = os.listdir(temp)
  assert len(left) <= 1 and all(name.startswith('sparse_trax_trainer_') for name in left), left
  resumed, straight = train_losses(run_dir), train_losses(reference_dir)
  # One record per step: the records after the restored checkpoint were dropped on resume.
  assert [r['step'] for r in read_metrics(run_dir) if 'loss' in r] == list(range(1, steps + 1))
  np.testing.assert_array_equal([resumed[s] for s in range(1, steps + 1)],
                                [straight[s] for s in range(1, steps + 1)])


def test_unknown_binding_fails_before_training(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files)
  out = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='n_stepz'):
    run_trainer('--config_file', config, '--output_dir', out, '--config', 'train.n_stepz = 3')
  assert not os.path.exists(os.path.join(out, 'checkpoints'))


def test_typo_in_configurable_name_names_the_file(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files)
  with open(config, 'a', encoding='utf-8') as f:
    f.write('TransformerLMM.d_model = 8\n')
  with pytest.raises(ValueError) as info:
    run_trainer('--config_file', config, '--output_dir', str(tmp_path / 'run'))
  assert 'TransformerLMM' in str(info.value) and 'tiny.gin' in str(info.value)


def test_missing_data_file_fails_naming_it(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files)
  missing = str(tmp_path / 'missing.txt')
  with pytest.raises(FileNotFoundError, match='missing.txt'):
    run_trainer('--config_file', config, '--output_dir', str(tmp_path / 'run'),
                '--config', f"TextFiles.train_files = ['{missing}']")


def test_unknown_tfds_name_fails_naming_it(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files)
  with pytest.raises(ValueError, match='no_such_corpus'):
    run_trainer('--config_file', config, '--output_dir', str(tmp_path / 'run'),
                '--config', 'Inputs.source = @TFDSSource()',
                '--config', "TFDSSource.name = 'no_such_corpus'")


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path, text_files):
  config = tiny_config(str(tmp_path), text_files, n_steps=40, checkpoint_every=2)
  out = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError, match=r'at step \d+') as info:
    run_trainer('--config_file', config, '--output_dir', out,
                '--config', 'train.optimizer = @SGD', '--config', 'train.learning_rate = 1e30',
                '--config', 'train.clip_gradient_norm = None')
  bad_step = int(str(info.value).split('at step ')[1].split(';')[0])
  kept = sorted(int(s) for s in os.listdir(os.path.join(out, 'checkpoints')))
  assert all(step < bad_step for step in kept)
  assert f'checkpoints/{kept[-1]}' in str(info.value) if kept else True


def test_missing_gin_file_is_reported(tmp_path):
  with pytest.raises(SystemExit, match='nope.gin'):
    run_trainer('--config_file', str(tmp_path / 'nope.gin'), '--output_dir', str(tmp_path))


@pytest.mark.slow
def test_arxiv_summarization_config_runs_on_local_data(tmp_path, monkeypatch):
  """The arxiv config end to end on a small local article -> abstract set.

  (TFDSSource itself reads scientific_papers/arxiv through tfds.testing.mock_data in
  test_data.py; mock_data patches the file system globally, which orbax's checkpoint
  threads would see, so here the source's dataset is local data instead.)
  """
  from sparse_trax.data import sources  # pylint: disable=import-outside-toplevel
  from sparse_trax.data import tf_setup  # pylint: disable=import-outside-toplevel
  tf = tf_setup.tensorflow()
  paragraphs = corpus.kjv_paragraphs()[:40]

  def local_articles(self, split):
    assert self.tfds_name == 'scientific_papers/arxiv'
    assert (self.input_key, self.target_key) == ('article', 'abstract')
    return tf.data.Dataset.from_tensor_slices(
        {'inputs': [p[:100] for p in paragraphs], 'targets': [p[:40] for p in paragraphs]})
  monkeypatch.setattr(sources.TFDSSource, 'dataset', local_articles)
  out = str(tmp_path / 'arxiv')
  overrides = ['Inputs.tokenizer = @ByteTokenizer()', 'Inputs.max_input_length = 128',
               'Inputs.max_length = 48', 'Inputs.batch_size = 2', 'Inputs.n_eval_batches = 1',
               'Terraformer.d_model = 16', 'Terraformer.d_ff = 64', 'Terraformer.n_heads = 2',
               'Terraformer.n_encoder_layers = 1', 'Terraformer.n_decoder_layers = 1',
               'Terraformer.max_len = 192', 'Terraformer.attention_chunk_len = 16',
               'Terraformer.ff_sparsity = 8', 'Terraformer.ff_use_sru = 8',
               'Terraformer.loss_sparsity = 2', 'Terraformer.n_decoder_attention_layers = 1',
               'Terraformer.n_hashes = 1',
               'train.n_steps = 2', 'train.eval_every = 2', 'train.checkpoint_every = 2',
               'train.decode_length = 0', 'train.progress_bar = False',
               'train.rouge_decode_length = 3']
  result = run_config(os.path.join('terraformer', 'arxiv_summarization.gin'), out, overrides)
  assert np.isfinite(result['eval_log_perplexity'])
  # The config turns on ROUGE (the sample's decoding is left out here: it would compile a
  # second predict-mode model; the other trainer tests decode samples): each eval decodes the eval set and scores it.
  evals = [r for r in read_metrics(out) if 'eval_loss' in r]
  assert evals and all(0.0 <= evals[-1][name] <= 100.0
                       for name in ('eval_rouge1', 'eval_rouge2', 'eval_rougeLsum'))
  assert evals[-1]['eval_rouge_examples'] == 2 and result['eval_rouge1'] == evals[-1]['eval_rouge1']


def _snapshot(folder):
  """Every file under a folder with its bytes."""
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, folder)] = f.read()
  return files


def test_changed_model_rerun_stops_and_changes_nothing_and_finished_rerun_appends_nothing(tmp_path, text_files, capsys):
  config = tiny_config(str(tmp_path), text_files, n_steps=8, decode_length=0)
  out = str(tmp_path / 'run')
  run_trainer('--config_file', config, '--output_dir', out)
  before = _snapshot(str(tmp_path))
  assert 'config.gin' in os.listdir(out) and len(os.listdir(os.path.join(out, 'checkpoints'))) == 2
  with pytest.raises(ValueError, match=r'does not fit the configured model: weights/.* is '
                                       r'\(.*\) float32 in the checkpoint but .* in the model.*'
                                       r'another --output_dir'):
    run_trainer('--config_file', config, '--output_dir', out, '--config', 'D_MODEL = 24')
  assert _snapshot(str(tmp_path)) == before      # checkpoints, config.gin, metrics.jsonl
  # The console entry point prints the message alone, and exits 1.
  capsys.readouterr()
  gin.clear_config()
  assert trainer.console_main(['--config_file', config, '--output_dir', out,
                               '--config', 'D_MODEL = 24']) == 1
  gin.clear_config()
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[0].startswith('trainer: error: checkpoint ') and 'Traceback' not in ''.join(lines)
  # Weights of the finished run, one call away, for a predict-mode model; nothing moved.
  from sparse_trax import models  # pylint: disable=import-outside-toplevel
  from sparse_trax.train import load_weights  # pylint: disable=import-outside-toplevel
  predict = models.TransformerLM(258, 16, 32, 1, 2, max_len=64, mode="predict")  # bytes + 2
  weights = load_weights(out, predict)
  assert sum(x.size for x in jax.tree_util.tree_leaves(weights)) > 0
  assert _snapshot(str(tmp_path)) == before
  # Rerunning the finished run with its own config appends nothing to metrics.jsonl.
  run_trainer('--config_file', config, '--output_dir', out)
  assert _snapshot(str(tmp_path))['run/metrics.jsonl'] == before['run/metrics.jsonl']


def test_addition_with_no_fitting_example_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(ValueError, match=r"no example of the train split of 'addition' fits "
                                       r'max_length=4'):
    run_trainer('--config_file', os.path.join(REPO, 'gin', 'terraformer', 'addition.gin'),
                '--output_dir', str(tmp_path / 'run'), '--config', 'Inputs.max_length = 4')
  assert time.perf_counter() - start < 30
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_eval_split_without_a_window_fails_before_training(tmp_path, text_files):
  short = tmp_path / 'short.txt'
  short.write_text('a few words\n', encoding='utf-8')
  config = tiny_config(str(tmp_path), text_files)
  with pytest.raises(ValueError, match=r"the eval split of 'text_files' holds \d+ tokens, less "
                                       r'than one window of max_length=16'):
    run_trainer('--config_file', config, '--output_dir', str(tmp_path / 'run'),
                '--config', f"TextFiles.eval_files = ['{short}']")
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('binding, message', [
    ('train.n_steps = -5', 'train: n_steps must be >= 1, got -5'),
    ("train.n_steps = '10'", "train: n_steps must be an int, got '10' (a str)"),
    ('Inputs.batch_size = 0', 'Inputs: batch_size must be >= 1, got 0'),
    ('D_MODEL = 64.5', 'TransformerLM: d_model must be an int, got 64.5 (a float)'),
    ("TransformerLM.n_heads = '4'", "TransformerLM: n_heads must be an int, got '4' (a str)"),
    ('N_LAYERS = -1', 'TransformerLM: n_layers must be >= 1, got -1'),
    ('train.decode_temperature = -1', 'train: decode_temperature must be >= 0.0, got -1'),
    ('Inputs.max_length = 0', 'Inputs: max_length must be >= 1, got 0'),
    ('D_MODLE = 32', 'gin macro D_MODLE (--config) is bound but never used'),
])
def test_bad_argument_gets_one_line(tmp_path, text_files, capsys, binding, message):
  config = tiny_config(str(tmp_path), text_files)
  gin.clear_config()
  status = trainer.console_main(['--config_file', config, '--output_dir', str(tmp_path / 'run'),
                                 '--config', binding])
  gin.clear_config()
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 1
  assert len(err) == 2 and err[1] == '(run with --debug for the traceback)', err
  assert err[0].startswith(f'trainer: error: {message}'), err
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_nested_includes_resolve_from_the_including_file(tmp_path):
  # A config outside the repo includes the quickstart by absolute path; the quickstart's
  # own includes ('sizes/cpu_small.gin', ...) resolve from its folder's 'gin' ancestor.
  mine = tmp_path / 'elsewhere' / 'mine.gin'
  mine.parent.mkdir()
  mine.write_text(f"include '{REPO}/gin/quickstart.gin'\ntrain.n_steps = 3\n", encoding='utf-8')
  # A file of the same name beside the including file wins over the search path.
  (tmp_path / 'elsewhere' / 'local.gin').write_text('train.log_every = 7\n', encoding='utf-8')
  other = tmp_path / 'other'       # given first, so its folder is first on gin's search path
  other.mkdir()
  (other / 'first.gin').write_text('train.seed = 1\n', encoding='utf-8')
  (other / 'local.gin').write_text('train.log_every = 99\n', encoding='utf-8')
  with open(mine, 'a', encoding='utf-8') as f:
    f.write("include 'local.gin'\n")
  gin.clear_config()
  try:
    experiment.parse_gin_config([str(other / 'first.gin'), str(mine)])
    assert gin.query_parameter('train.n_steps') == 3
    assert gin.query_parameter('train.log_every') == 7
    assert gin.query_parameter('%D_MODEL') == 128
  finally:
    gin.clear_config()


def test_span_corruption_cpu_config_trains_an_encoder_decoder(tmp_path):
  """gin/scaling/span_corruption_cpu.gin (the C4 setup's CPU twin on the shipped
  corpus) for a few steps with a tiny model: span-corrupted batches train and evaluate."""
  out = str(tmp_path / 'span')
  overrides = ['ScalingTransformer.d_model = 16', 'ScalingTransformer.d_ff = 32',
               'ScalingTransformer.n_heads = 2', 'ScalingTransformer.n_encoder_layers = 1',
               'ScalingTransformer.n_decoder_layers = 1', 'Inputs.batch_size = 2',
               'Inputs.n_eval_batches = 1', 'train.n_steps = 2', 'train.eval_every = 2',
               'train.checkpoint_every = 2', 'train.decode_length = 4', 'train.log_every = 1',
               'train.progress_bar = False']
  result = run_config(os.path.join('scaling', 'span_corruption_cpu.gin'), out, overrides)
  assert np.isfinite(result['eval_log_perplexity'])
  assert '<extra_id_0>' in result['sample']['prompt']     # a corrupted source, decoded
  assert [r['step'] for r in read_metrics(out) if 'loss' in r] == [1, 2]
