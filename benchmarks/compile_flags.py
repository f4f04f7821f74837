"""XLA:CPU compile time under the test suite's flags (tests/conftest.py) and others.

The tests spend most of their time compiling tiny programs, many of them single
eager operations. For each set of XLA_FLAGS this runs, in a fresh process each
time (flags are read when jax starts), a fixed workload: 120 eager operations of
distinct shapes (add, tanh, a matrix product on [n, 3] for n = 1..40) and a jitted
gradient of a 20-layer tanh stack at 5 batch sizes. It reports the total backend
compile time (jax.monitoring's backend_compile_duration) and the wall time of the
workload, min / median over the repeats, taken in turn (A B A B ...), and each
set's ratio to the first.

  python benchmarks/compile_flags.py [--repeats 3]
"""

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys

FLAG_SETS = {
    'optimization level 0 (before)': '--xla_backend_optimization_level=0',
    'the suite: level 0 + loop emitters': ('--xla_backend_optimization_level=0 '
                                           '--xla_cpu_use_fusion_emitters=false'),
    "XLA's defaults": '',
}
# jaxlib 0.12 dropped the loop-emitter switch, and XLA aborts on a flag it does not know
# (the suite gives it only to jaxlib < 0.11: tests/conftest.py).
LOOP_EMITTERS_UNTIL = (0, 11)

WORKLOAD = '''
import json, time
import jax, jax.numpy as jnp
from jax import monitoring
totals = {}
monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: totals.__setitem__(event, totals.get(event, 0.0) + seconds))
start = time.perf_counter()
for n in range(1, 41):
  a = jnp.ones((n, 3))
  (a + a).block_until_ready(); jnp.tanh(a).block_until_ready(); (a @ a.T).block_until_ready()
def loss(w, x):
  for _ in range(20):
    x = jnp.tanh(x @ w) + x.sum(-1, keepdims=True)
  return jax.nn.softmax(x).sum()
grad = jax.jit(jax.grad(loss))
for batch in range(3, 8):
  grad(jnp.ones((16, 16)), jnp.ones((batch, 16))).block_until_ready()
print(json.dumps({'compile': totals.get('/jax/core/compile/backend_compile_duration', 0.0),
                  'wall': time.perf_counter() - start}))
'''


def measure(flags: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  out = subprocess.run([sys.executable, '-c', WORKLOAD], env=env, capture_output=True,
                       text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  flag_sets = dict(FLAG_SETS)
  jaxlib_version = importlib.metadata.version('jaxlib')
  if tuple(int(p) for p in jaxlib_version.split('.')[:2]) >= LOOP_EMITTERS_UNTIL:
    del flag_sets['the suite: level 0 + loop emitters']
    print(f'jaxlib {jaxlib_version} has no --xla_cpu_use_fusion_emitters: '
          'comparing the other flag sets', file=sys.stderr)
  runs = {name: [] for name in flag_sets}
  for repeat in range(args.repeats):
    for name, flags in flag_sets.items():
      runs[name].append(measure(flags))
      print(f'\rrepeat {repeat + 1}/{args.repeats}: {name}'.ljust(70), end='', file=sys.stderr)
  print(file=sys.stderr)
  first = statistics.median(r['compile'] for r in runs[next(iter(flag_sets))])
  print(f"| flags | backend compile s (min / median) | workload wall s (min / median) "
        f"| compile vs first |")
  print('|---|---|---|---|')
  for name, results in runs.items():
    compile_s = [r['compile'] for r in results]
    wall_s = [r['wall'] for r in results]
    print(f'| {name} | {min(compile_s):.2f} / {statistics.median(compile_s):.2f} | '
          f'{min(wall_s):.2f} / {statistics.median(wall_s):.2f} | '
          f'{statistics.median(compile_s) / first:.2f}x |')


if __name__ == '__main__':
  main()
