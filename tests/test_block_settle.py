"""benchmarks/block_settle.py at toy sizes: both studies run and their JSON reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_positions_and_both_schedules_are_timed_and_written(tmp_path) -> None:
    out = tmp_path / "settle.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "block_settle.py"), "--sizes", "32",
                             "--batches", "1", "--layers", "blocks.6.0.conv_dw", "--positions", "2",
                             "--position-seconds", "0.2", "--rounds", "2", "--seconds", "0.05", "--json", str(out)],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
                                 "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert (row["size"], row["batch"]) == (32, 1) and row["positions"]["cycles"] >= 4
    assert len(row["positions"]["ratio_by_position"]) == 2 and all(r > 0 for r in row["positions"]["ratio_by_position"])
    for schedule in ("settle", "no settle"):  # rounds of each, every one with at least one paired cycle
        assert len(row["rounds"][schedule]["ratios"]) == 2 and min(row["rounds"][schedule]["cycles"]) >= 1
    assert report["settings"]["rounds"] == 2 and report["machine"]["torch"] and "wrote" in result.stdout
