"""The README's Python example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_readme_compose_example_runs(capsys):
  text = open(README, encoding='utf-8').read()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  example = blocks[0]
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
  text = open(README, encoding='utf-8').read()
  example = re.findall(r'```python\n(.*?)```', text, re.S)[1]
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  samples = namespace['samples']
  assert len(samples) == 2 and all(1 <= len(row) <= 10 for row in samples)
  assert namespace['sequences'].shape == (1, 4, 10) and namespace['scores'].shape == (1, 4)
