"""benchmarks/runtime_overhead.py --quick: every row the full run prints (base/adapted, fp32/int8), in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_times_base_and_adapted_fp32_and_int8_interleaved(tmp_path) -> None:
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runtime_overhead.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    entry = report["sizes"]["32"]
    rows = {(m["label"], m["batch"], m["threads"]): m for m in entry["results"]}
    for label in ("base fp32", "base int8", "adapted fp32", "adapted int8"):
        assert {(label, 1, 1), (label, 32, 1)} <= set(rows), label
    for batch in (1, 32):  # every ratio is against the base fp32 file measured beside it (paired by turn)
        adapted = rows[("adapted int8", batch, 1)]
        pooled = adapted["p50_ms"] / rows[("base fp32", batch, 1)]["p50_ms"]
        assert adapted["vs_base"] == pytest.approx(pooled, rel=0.5)
    for name in ("base int8", "adapted int8"):
        found = entry["int8"][name]
        assert found["shipped"] in ("int8", "fp32") and 0.0 <= found["top1_agreement"] <= 1.0 and found["images"] >= 32
        assert found["timed"] == ("accuracy-controlled" if found["shipped"] == "int8" else "plain all-int8")
    assert "adapted int8" in done.stdout and "int8 vs base int8" in done.stdout
