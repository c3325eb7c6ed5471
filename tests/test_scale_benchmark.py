"""benchmarks/scale.py runs the whole path a user would at its smallest size: a synthetic MS-Celeb TSV,
the streamed ingest into a store, training from the store; one table row, no TensorFlow start-up lines."""
from __future__ import annotations

import re

from tests.test_console import noise_lines, run_as_a_user


def test_scale_benchmark_makes_ingests_and_trains_from_a_store(tmp_path, shared_data):
    proc = run_as_a_user(tmp_path, "benchmarks/scale.py", "--faces", "1280", "--steps", "2",
                         "--workdir", str(tmp_path / "scale"))
    assert (tmp_path / "scale" / "synthetic-1280-seed0.tsv").is_file()
    assert any((tmp_path / "scale" / "store-1280-seed0" / "shards").iterdir())
    faces, identities = map(int, re.search(r"training set (\d+) detected faces of (\d+) identities",
                                           proc.stdout).groups())
    assert identities == 64 and 1200 <= faces <= 1280  # 20 faces per made-up identity; a few without a face
    row = re.search(r"^\| 1,280 \| ([\d.]+) \| (\d+) / (\d+) \| ([\d.]+) \| (\d+) \|$", proc.stdout, re.M)
    assert row, proc.stdout
    assert all(float(value) > 0 for value in row.groups())
    assert not noise_lines(proc.stderr + proc.stdout)
