"""The README's Python example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def python_block(containing: str) -> str:
  """The README's one ```python block that contains `containing`."""
  text = open(README, encoding='utf-8').read()
  blocks = [b for b in re.findall(r'```python\n(.*?)```', text, re.S) if containing in b]
  assert len(blocks) == 1, f'{len(blocks)} python blocks contain {containing!r}'
  return blocks[0]


def test_readme_compose_example_runs(capsys):
  example = python_block('tl.summary(model, weights)')
  assert len(example.strip().splitlines()) <= 10
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['logits'].shape == (2, 16, 100)
  assert 'total' in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
  text = open(README, encoding='utf-8').read()
  commands = re.findall(r'```bash\n(.*?)\n```', text, re.S)
  assert 'trainer --config_file gin/quickstart.gin' in commands[0]
  command = commands[1].strip()
  ci = open(os.path.join(os.path.dirname(README), '.ci', 'run'), encoding='utf-8').read()
  assert command in ci


def test_readme_decoding_example_runs():
  example = python_block('samples')
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  samples = namespace['samples']
  assert len(samples) == 2 and all(1 <= len(row) <= 10 for row in samples)
  assert namespace['sequences'].shape == (1, 4, 10) and namespace['scores'].shape == (1, 4)


def test_readme_trained_run_example_runs(tmp_path, capsys):
  """The load_weights example, on a one-step run of the quickstart config."""
  import gin  # pylint: disable=import-outside-toplevel
  from sparse_trax import trainer  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / 'quickstart')
  gin.clear_config()
  try:
    trainer.main(['--config_file', os.path.join(os.path.dirname(README), 'gin', 'quickstart.gin'),
                  '--output_dir', out, '--config', 'train.n_steps = 1',
                  '--config', 'Inputs.n_eval_batches = 1', '--config', 'train.decode_length = 0',
                  '--config', 'train.progress_bar = False'])
  finally:
    gin.clear_config()
  example = python_block("run = '/tmp/sparse_trax_quickstart'")
  example = example.replace("'/tmp/sparse_trax_quickstart'", repr(out))
  capsys.readouterr()
  exec(compile(example, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip()


def test_readme_trax_conversion_example_runs(monkeypatch):
  monkeypatch.chdir(os.path.dirname(README))
  namespace = {}
  exec(compile(python_block('trax_compat.load_model'), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['model'].mode == 'predict' and namespace['weights']
