"""The latency-plan cache: measured costs and finished plans, beside the tuned export forms' cache.

Costs are keyed without the budget and the scoring settings, so planning again at another budget
re-uses the expensive part (an export and a profile per batch); plans are keyed by everything.
Both keys hold the weights' hash, the candidates, the size and the machine (ONNX Runtime
version, CPU, threads). A damaged cache only costs a re-measurement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from qdeploy import atomic
from qdeploy.export.forms import default_cache, machine_key
from qdeploy.export.report import weights_sha256

CACHE_NAME = "latency_plans.json"
CACHE_FORMAT = "qdeploy-latency-plans/5"  # /2: plans pass on the bound of their median, not the median;
# /3: costs and checks timed in alternation with spinning off; /4: in blocks whose first runs are untimed;
# /5: on the prediction bound of their rounds (where one more timing lands), not the median's bound

# Settings a layer's measured cost does not depend on: a plan at another budget or with other
# scores re-uses the costs (the expensive part: an export and a profile per batch).
_NOT_COST_SETTINGS = ("latency_budget", "data", "score_batches", "score_batch_size", "head_probe_steps",
                      "train_primary", "trials", "trial_steps", "scoring", "scoring_steps",
                      "check_rounds", "check_max_rounds")


def cache_key(model: nn.Module, candidates: Sequence[str], size: tuple[int, int], options: Any, section: str) -> str:
    """The key of `section` ("plans" or "costs") for a plan of `model` with `options` (a PlanOptions)."""
    skip = {"cache", "use_cache", "candidates", "input_size", *(_NOT_COST_SETTINGS if section == "costs" else ())}
    settings = {k: v for k, v in asdict(options).items() if k not in skip}
    payload = [section, weights_sha256(model), list(candidates), list(size), settings,
               machine_key(options.threads, max(options.batches))]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_path(options: Any) -> Path:
    """`options.cache`, else latency_plans.json beside the tuned forms' cache."""
    return options.cache or default_cache().with_name(CACHE_NAME)


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """{"plans": {key: plan}, "costs": {key: measured costs}} (empty when missing or damaged)."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache costs a re-measurement only
    return data if data.get("format") == CACHE_FORMAT else {}


def store(path: Path, section: str, key: str, value: Any) -> None:
    data = read_cache(path)
    data.setdefault(section, {})[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {**data, "format": CACHE_FORMAT})
