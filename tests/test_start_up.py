"""A quick start (#26 item 4): what the trainer and the data package import, and when.

`trainer --help`, a missing gin file, a gin syntax error and a misspelt macro
are answered before JAX is imported; an unknown configurable needs gin's
registrations (JAX, no TensorFlow); TensorFlow and orbax load only when a
dataset or a checkpoint is made. Wall-clock time is the benchmarks' business:
here the imports are checked, which is what makes the start quick.
"""

import json
import os
import subprocess
import sys

import pytest

from sparse_trax import gin_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'gin', 'quickstart.gin')

# Runs each command line through the console script in one process and prints, for each,
# the exit status and which heavy modules had been imported when it returned.
SCRIPT = '''
import contextlib, io, json, sys
from sparse_trax import trainer
for argv in json.loads(sys.argv[1]):
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      status = trainer.console_main(argv)
    except SystemExit as e:   # argparse's --help
      status = e.code
  print(json.dumps({'status': status, 'first_line': (err.getvalue().splitlines() or [''])[0],
                    'imported': [m for m in ('jax', 'tensorflow', 'orbax') if m in sys.modules]}))
'''


def run_console(tmp_path, *argvs):
  finished = subprocess.run([sys.executable, '-c', SCRIPT, json.dumps(argvs)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert finished.returncode == 0, finished.stderr[-2000:]
  return [json.loads(line) for line in finished.stdout.splitlines()]


def test_argument_errors_answer_before_jax_and_gin_errors_before_tensorflow(tmp_path):
  broken = tmp_path / 'broken.gin'
  broken.write_text(f"include '{QUICKSTART}'\nD_MODEL = (\n", encoding='utf-8')
  out = str(tmp_path / 'run')
  help_, missing, syntax, macro, unknown = run_console(
      tmp_path,
      ['--help'],
      ['--config_file', 'nope.gin', '--output_dir', out],
      ['--config_file', str(broken), '--output_dir', out],
      ['--config_file', QUICKSTART, '--output_dir', out, '--config', 'D_MODLE = 3'],
      ['--config_file', QUICKSTART, '--output_dir', out, '--config', 'train.n_stepz = 3'])
  assert help_ == {'status': 0, 'first_line': '', 'imported': []}
  assert missing['status'] == "trainer: gin file 'nope.gin' does not exist"
  assert missing['imported'] == []
  assert syntax == {'status': 1, 'imported': [], 'first_line': (
      f'trainer: error: gin syntax error in {broken}, at its end: EOF in multi-line statement '
      '(an unclosed bracket or string)')}
  assert macro['status'] == 1 and macro['imported'] == []
  assert macro['first_line'].startswith('trainer: error: gin macro D_MODLE (--config) is bound')
  # Unknown names need the registrations: JAX, but neither TensorFlow nor orbax.
  assert unknown['status'] == 1 and unknown['imported'] == ['jax']
  assert unknown['first_line'] == ("trainer: error: Configurable 'train' doesn't have a "
                                   "parameter named 'n_stepz'.")
  assert not os.path.exists(out)


def test_data_train_and_gin_registrations_import_without_tensorflow():
  code = ('import sys, sparse_trax.data, sparse_trax.train, sparse_trax.gin_config; '
          'print(sorted(m for m in ("tensorflow", "tensorflow_datasets", "tensorflow_text", '
          '"orbax") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS='cpu')).stdout.strip()
  assert out == '[]'


@pytest.mark.parametrize('text, message', [
    ('FOO = ', 'gin syntax error in f.gin, line 1: Unable to parse value.\n    FOO ='),
    ('a.b = 1\nc.d = [1, 2\ne = 3\n',
     "gin syntax error in f.gin, line 3: Expected ',' or ']'.\n    e = 3"),
    ('x y = 2', "gin syntax error in f.gin, line 1: Couldn't parse statement, "
                "expected ':' or '='.\n    x y = 2"),
    ('D = (\n', 'gin syntax error in f.gin, at its end: EOF in multi-line statement '
                '(an unclosed bracket or string)'),
])
def test_gin_syntax_errors_name_the_file_line_and_text(text, message):
  with pytest.raises(gin_files.GinSyntaxError) as info:
    gin_files.read_statements(text, 'f.gin')
  assert str(info.value) == message


def test_check_text_reads_includes_and_names_bindings(tmp_path):
  (tmp_path / 'inner.gin').write_text('X = [1,\n', encoding='utf-8')
  (tmp_path / 'outer.gin').write_text("include 'inner.gin'\nY = %X\n", encoding='utf-8')
  with pytest.raises(gin_files.GinSyntaxError, match='inner.gin, at its end: EOF'):
    gin_files.check_text([str(tmp_path / 'outer.gin')])
  with pytest.raises(gin_files.GinSyntaxError, match=r'in --config, at its end'):
    gin_files.check_text([QUICKSTART], ['train.n_steps = ('])
  gin_files.check_text([QUICKSTART], ['train.n_steps = 3'])   # nothing wrong: no error
