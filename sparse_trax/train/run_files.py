"""The files of a run's folder besides checkpoints: metrics.jsonl."""

import json
import os


def append_jsonl(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the records of steps after `last_step` (a run resumed from that step
  redoes them), so that metrics.jsonl keeps one record per step and kind.

  A torn last line (a kill mid-write) is dropped too. Rewrites atomically.
  """
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get('step', 0) <= last_step:
        kept.append(line if line.endswith('\n') else line + '\n')
  temporary = f'{path}.tmp'
  with open(temporary, 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(temporary, path)
