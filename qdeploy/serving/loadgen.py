"""Load generation with the reference client: many concurrent `tritonclient.http` clients.

Shared by the load test and benchmarks/serve_load.py so both measure the same way. Each
client is its own connection and greenlet (tritonclient.http runs on gevent), sending binary
tensors in a closed loop; every answer is checked against the expected output. Counts and
time are bounded: leftovers at `time_limit_s` are killed and counted as failures.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class LoadReport:
    requests: int
    seconds: float
    latencies_s: list[float] = field(repr=False)
    failures: list[str]
    mismatches: int
    answers: list[tuple[float, str]] = field(default_factory=list, repr=False)  # (perf_counter, model_version)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3) if self.latencies_s else float("nan")

    def summary(self) -> dict:
        return {"requests": self.requests, "ok": len(self.latencies_s), "failures": len(self.failures),
                "mismatches": self.mismatches, "seconds": round(self.seconds, 3),
                "throughput_rps": round(self.throughput, 1), "p50_ms": round(self.percentile_ms(50), 2),
                "p99_ms": round(self.percentile_ms(99), 2)}


def run_load(address: str, model: str, input_name: str, output_name: str, batches: Sequence[np.ndarray],
             expected: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]], clients: int = 16,
             requests_per_client: int = 20, atol: float = 1e-4, time_limit_s: float = 120.0,
             pause_s: tuple[float, float] = (0.0, 0.0), stop: threading.Event | None = None) -> LoadReport:
    """Send up to clients x requests_per_client requests to `address` (host:port, loopback in tests).

    Request k of client c sends batches[(c * requests_per_client + k) % len(batches)] and
    must get back expected[...] within `atol`; while versions change under the load, pass
    {model_version: answers} and each answer is checked against its version's. After each
    answer a client pauses for a time drawn uniformly from `pause_s` (seconds; seeded per
    client), keeping its connection. Clients stop early once `stop` is set.
    """
    import random

    import gevent
    import tritonclient.http as httpclient

    latencies: list[float] = []
    failures: list[str] = []
    answers: list[tuple[float, str]] = []
    mismatches = sent = 0
    by_version = expected if isinstance(expected, Mapping) else None

    def client_loop(index: int) -> None:
        nonlocal mismatches, sent
        pauses = random.Random(index)
        with httpclient.InferenceServerClient(address, connection_timeout=30, network_timeout=60) as client:
            for k in range(requests_per_client):
                if stop is not None and stop.is_set():
                    break
                sent += 1
                sample = (index * requests_per_client + k) % len(batches)
                tensor = httpclient.InferInput(input_name, list(batches[sample].shape), "FP32")
                tensor.set_data_from_numpy(batches[sample], binary_data=True)
                wanted = [httpclient.InferRequestedOutput(output_name, binary_data=True)]
                started = time.perf_counter()
                try:
                    result = client.infer(model, [tensor], outputs=wanted)
                except Exception as exc:  # every failure is counted, whatever the client raises
                    failures.append(f"client {index} request {k}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                version = result.get_response()["model_version"]
                answers.append((time.perf_counter(), version))
                wanted = by_version.get(version) if by_version is not None else expected
                if wanted is None or not np.allclose(result.as_numpy(output_name), wanted[sample], atol=atol):
                    mismatches += 1
                if pause_s[1] > 0:
                    gevent.sleep(pauses.uniform(*pause_s))

    started = time.perf_counter()
    greenlets = [gevent.spawn(client_loop, index) for index in range(clients)]
    gevent.joinall(greenlets, timeout=time_limit_s)
    unfinished = [g for g in greenlets if not g.dead]
    if unfinished:
        gevent.killall(unfinished)
        failures.append(f"{len(unfinished)} clients still running after {time_limit_s:g} s")
    failures += [f"client crashed: {g.exception}" for g in greenlets if g not in unfinished and g.exception]
    return LoadReport(sent, time.perf_counter() - started, latencies, failures, mismatches, answers)


def batch_size_histogram(metrics_text: str, model: str) -> dict[str, int]:
    """Engine runs per batch-size bucket ("1", "2", "3-4", ...) from a /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    cumulative: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "qdeploy_batch_size":
            cumulative = [(float(s.labels["le"]), s.value) for s in family.samples
                          if s.name.endswith("_bucket") and s.labels.get("model") == model]
    histogram, lower, below = {}, 0.0, 0.0
    for upper, count in sorted(cumulative):
        if count > below:
            first, last = int(lower) + 1, upper
            label = str(first) if last == first else (f"{first}+" if last == float("inf") else f"{first}-{int(last)}")
            histogram[label] = int(count - below)
        lower, below = upper, count
    return histogram
