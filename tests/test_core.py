"""The ground floor on local disk: atomic writes and file names from ids."""

import csv
import json
import os

import pytest

from parallelnet.core import paths


def test_atomic_write_appears_whole_or_not_at_all(tmp_path):
  target = tmp_path / 'sub' / 'metrics.json'
  with paths.atomic_open(target) as f:
    f.write('{"accuracy": ')
    assert not target.exists()  # Readers never see half a file.
    f.write('0.5}\n')
  assert json.loads(target.read_text()) == {'accuracy': 0.5}
  with pytest.raises(RuntimeError):
    with paths.atomic_open(target) as f:
      f.write('broken')
      raise RuntimeError('stop')
  assert json.loads(target.read_text()) == {'accuracy': 0.5}  # Old file kept.
  assert sorted(os.listdir(target.parent)) == ['metrics.json']  # No temp.


def test_text_csv_and_bytes_are_written_unchanged(tmp_path):
  with paths.atomic_open(tmp_path / 'a.csv') as f:
    csv.writer(f).writerow(['id', 'p'])
  assert (tmp_path / 'a.csv').read_bytes() == b'id,p\r\n'
  paths.write_bytes_atomic(tmp_path / 'b.bin', b'\x00\xff')
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\xff'
  paths.write_json_atomic(tmp_path / 'c.json', {'é': 1})
  assert json.loads((tmp_path / 'c.json').read_text('utf-8')) == {'é': 1}


def test_safe_names_never_collide():
  ids = ['a/1', 'a_1', 'a 1', 'a:1', 'plain-id_2', '../up', '']
  names = [paths.safe_name(i) for i in ids]
  assert len(set(names)) == len(ids), names
  assert paths.safe_name('plain-id_2') == 'plain-id_2'
  assert all('/' not in n and not n.startswith('.') for n in names)
