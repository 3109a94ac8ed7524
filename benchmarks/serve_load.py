"""Load benchmark of `qdeploy serve`: many concurrent tritonclient.http clients on loopback.

Exports a quadratic MobileNetV3 (timm `mobilenetv3_small_050`, random weights, every
depthwise conv adapted) to ONNX, writes it into a Triton repository twice (dynamic batching
up to 8 rows, and max batch 1 as the no-batching baseline), starts `qdeploy serve` in a
subprocess on 127.0.0.1 for each, and drives it with 16 clients x 40 requests, three times
(the median run is reported: this small machine is shared and its timings are noisy). Every
answer is checked against local ONNX Runtime inference. Reports throughput, p50/p99 latency,
the batch-size histogram from /metrics and failures; writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py [--clients 16] [--requests 40] [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
START = "from qdeploy.cli import main; main()"


def export_quadratic_mobilenet(folder: Path, size: int) -> Path:
    """A quadratic MobileNetV3-small (random weights, non-zero quadratic terms) through `qdeploy export`."""
    import torch

    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.export import ExportOptions, export_model
    from qdeploy.models.sources import load_base_model

    torch.manual_seed(0)
    model = load_base_model("mobilenetv3_small_050", pretrained=False, num_classes=100).eval()
    model, _ = adapt(model, input_size=(3, size, size))
    randomize_quadratic_terms(model)  # as after training: the quadratic terms contribute
    export_model(model, folder, ExportOptions(modes=("decomposed",), input_size=(size, size)))
    return folder / "decomposed.onnx"


class ServeProcess:
    """`qdeploy serve --port 0` in a subprocess; the port is read from its start-up line."""

    def __init__(self, repo: Path, threads: int) -> None:
        command = [sys.executable, "-c", START, "serve", "--repo", str(repo), "--port", "0",
                   "--threads", str(threads), "--max-queue", "256"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.address = None
        deadline = time.monotonic() + 120
        for line in self.process.stdout:
            if line.startswith("serving on http://"):
                self.address = line.split()[2].removeprefix("http://")
                break
            if time.monotonic() > deadline:
                break
        if self.address is None or not self._ready(deadline):
            self.stop()
            raise RuntimeError("qdeploy serve did not start")

    def _ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/health/ready", timeout=5):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per engine")
    parser.add_argument("--repeats", type=int, default=3, help="load runs per server; the median is reported")
    args = parser.parse_args()

    from qdeploy.atomic import write_text
    from qdeploy.runtime import load_engine
    from qdeploy.serving import write_triton_model
    from qdeploy.serving.loadgen import batch_size_histogram, run_load

    with tempfile.TemporaryDirectory(prefix="qdeploy-serve-load-") as tmp:
        started = time.perf_counter()
        onnx_path = export_quadratic_mobilenet(Path(tmp) / "export", args.size)
        print(f"exported {onnx_path.name} in {time.perf_counter() - started:.0f} s")
        engine = load_engine(onnx_path, "ort-cpu", threads=args.threads)
        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32) for _ in range(32)]
        expected = [engine.infer(b)["output"] for b in batches]

        rows = {}
        for label, max_batch, delay_us in (("dynamic batching (max 8, 2 ms)", 8, 2000), ("no batching", 1, 0)):
            repo = Path(tmp) / f"repo-{max_batch}"
            write_triton_model(repo, "quad", onnx_path, max_batch=max_batch, max_queue_delay_us=delay_us)
            server = ServeProcess(repo, args.threads)
            try:
                reports = [run_load(server.address, "quad", "input", "output", batches, expected,
                                    clients=args.clients, requests_per_client=args.requests, atol=1e-4)
                           for _ in range(args.repeats)]
                histogram = batch_size_histogram(server.metrics(), "quad")
            finally:
                server.stop()
            median = sorted(reports, key=lambda r: r.throughput)[len(reports) // 2]
            rows[label] = {**median.summary(), "throughput_rps_all": [round(r.throughput, 1) for r in reports],
                           "failures_all": sum(len(r.failures) for r in reports),
                           "mismatches_all": sum(r.mismatches for r in reports),
                           "batch_sizes": histogram, "first_failures": [f for r in reports for f in r.failures][:3]}

    print(f"\n{args.clients} clients x {args.requests} requests, 1x3x{args.size}x{args.size} FP32, "
          f"ORT CPU ({args.threads} thread/engine), loopback; median of {args.repeats} runs, "
          "failures and wrong answers over all runs")
    print(f"{'configuration':32} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5} {'wrong':>6}  "
          "req/s of each run; batch sizes (engine runs)")
    for label, row in rows.items():
        print(f"{label:32} {row['throughput_rps']:8.1f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
              f"{row['failures_all']:5d} {row['mismatches_all']:6d}  {row['throughput_rps_all']}; {row['batch_sizes']}")
    write_text(RESULTS, json.dumps({"clients": args.clients, "requests_per_client": args.requests,
                                    "repeats": args.repeats,
                                   "input": [1, 3, args.size, args.size], "threads": args.threads,
                                   "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
