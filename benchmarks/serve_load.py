"""Load benchmark: the same model and load on qdeploy's embedded server and on the real Triton server.

Exports a quadratic MobileNetV3 (timm `mobilenetv3_small_050`, random weights, every
depthwise conv adapted) to ONNX and writes it into one Triton repository for Triton's
Python backend (model.py runs qdeploy's ONNX Runtime CPU engine, 1 thread, 1 instance),
twice: dynamic batching up to 8 rows (2 ms queue delay) and max batch 1 (no batching). Both
servers serve that same folder in a subprocess on 127.0.0.1: `qdeploy serve` (embedded)
and `tritonserver` 2.51 (`qdeploy triton install`). 16 tritonclient.http clients x 40
requests drive each, three times, interleaved (the median run is reported: this small
machine is shared and its timings are noisy); every answer is checked against local ONNX Runtime inference.
Then 32 clients that pause 4.9-5.1 s between requests (around the 5 s keep-alive that used to
close the embedded server's idle connections) send 4 requests each. Reports requests/s,
p50/p99 latency, the server's CPU time per request, failures and the batch sizes each server formed (embedded: its /metrics
histogram; Triton: its statistics); writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py [--clients 16] [--requests 40] [--repeats 3] [--size 64]
                                    [--servers embedded,triton] [--pausing-clients 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
START = "from qdeploy.cli import main; main()"
CONFIGS = {"batching": (8, 2000), "no batching": (1, 0)}  # label -> (max batch, queue delay us)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (Triton's stubs), from /proc."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree = {pid}
    for _ in range(4):  # tritonserver -> stub processes
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
    ticks = sum(stats[p][1] for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


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


class EmbeddedServer:
    """`qdeploy serve --port 0` in a subprocess; the port is read from its start-up line."""

    def __init__(self, repo: Path) -> None:
        command = [sys.executable, "-c", START, "serve", "--repo", str(repo), "--port", "0", "--max-queue", "256"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.address = None
        for line in self.process.stdout:
            if line.startswith("serving on http://"):
                self.address = line.split()[2].removeprefix("http://")
                break
        if self.address is None:
            self.stop()
            raise RuntimeError("qdeploy serve did not start")
        self.pid = self.process.pid

    def batch_sizes(self, model: str) -> dict[str, int]:
        from qdeploy.serving.loadgen import batch_size_histogram

        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as response:
            return batch_size_histogram(response.read().decode(), model)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


class TritonTarget:
    """tritonserver on free loopback ports (TritonServer), with batch sizes from its statistics."""

    def __init__(self, repo: Path) -> None:
        from qdeploy.serving.triton_install import install_triton
        from qdeploy.serving.triton_server import TritonServer

        self.server = TritonServer(repo, install=install_triton(), exit_timeout_s=10).start()
        self.address = self.server.http_address
        self.pid = self.server.process.pid

    def batch_sizes(self, model: str) -> dict[str, int]:
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(self.address) as client:
            stats = client.get_inference_statistics(model)["model_stats"][0]["batch_stats"]
        stats = sorted(stats, key=lambda s: s["batch_size"])
        return {str(s["batch_size"]): int(s["compute_infer"]["count"]) for s in stats}

    def stop(self) -> None:
        self.server.stop()


SERVERS = {"embedded": EmbeddedServer, "triton": TritonTarget}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="load runs per server; the median is reported")
    parser.add_argument("--servers", default="embedded,triton", help="comma list of embedded, triton")
    parser.add_argument("--pausing-clients", type=int, default=32, help="clients of the pause run (0 skips it)")
    args = parser.parse_args()
    servers = args.servers.split(",")

    from qdeploy.atomic import write_text
    from qdeploy.runtime import load_engine
    from qdeploy.serving import write_triton_model
    from qdeploy.serving.loadgen import run_load

    rows = {}
    with tempfile.TemporaryDirectory(prefix="qdeploy-serve-load-") as tmp:
        started = time.perf_counter()
        onnx_path = export_quadratic_mobilenet(Path(tmp) / "export", args.size)
        print(f"exported {onnx_path.name} in {time.perf_counter() - started:.0f} s")
        engine = load_engine(onnx_path, "ort-cpu", threads=1)
        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32) for _ in range(32)]
        expected = [engine.infer(b)["output"] for b in batches]
        repo = Path(tmp) / "repo"
        for label, (max_batch, delay_us) in CONFIGS.items():
            write_triton_model(repo, label.replace(" ", "-"), onnx_path, backend="python", engine_backend="ort-cpu",
                               threads=1, max_batch=max_batch, max_queue_delay_us=delay_us)

        started_servers = {}
        try:
            for kind in servers:
                started_servers[kind] = SERVERS[kind](repo)
            # Interleaved: each repeat runs every configuration on every server in turn, so the
            # load of other work on this shared machine falls on both servers alike.
            reports: dict[str, list] = {}
            for _ in range(args.repeats):
                for label in CONFIGS:
                    for kind, server in started_servers.items():
                        cpu_before = tree_cpu_seconds(server.pid)
                        report = run_load(server.address, label.replace(" ", "-"), "input", "output", batches,
                                          expected, clients=args.clients, requests_per_client=args.requests, atol=1e-4)
                        cpu_ms = (tree_cpu_seconds(server.pid) - cpu_before) * 1e3 / report.requests
                        reports.setdefault(f"{kind}, {label}", []).append((report, cpu_ms))
            for kind, server in started_servers.items():
                for label in CONFIGS:
                    runs = [report for report, _ in reports[f"{kind}, {label}"]]
                    median = sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]
                    cpu_ms = [cpu for _, cpu in reports[f"{kind}, {label}"]]
                    rows[f"{kind}, {label}"] = {
                        **median.summary(), "throughput_rps_all": [round(r.throughput, 1) for r in runs],
                        "server_cpu_ms_per_request": round(float(np.median(cpu_ms)), 3),
                        "requests_all": sum(r.requests for r in runs),
                        "failures_all": sum(len(r.failures) for r in runs),
                        "mismatches_all": sum(r.mismatches for r in runs),
                        "batch_sizes": server.batch_sizes(label.replace(" ", "-")),
                        "first_failures": [f for r in runs for f in r.failures][:3]}
                if args.pausing_clients:
                    paused = run_load(server.address, "batching", "input", "output", batches, expected,
                                      clients=args.pausing_clients, requests_per_client=4, atol=1e-4,
                                      pause_s=(4.9, 5.1))
                    rows[f"{kind}, pausing clients"] = {**paused.summary(), "requests_all": paused.requests,
                                                        "failures_all": len(paused.failures),
                                                        "mismatches_all": paused.mismatches,
                                                        "first_failures": paused.failures[:3]}
        finally:
            for server in started_servers.values():
                server.stop()

    print(f"\n{args.clients} clients x {args.requests} requests, 1x3x{args.size}x{args.size} FP32, Python-backend "
          f"repository (ORT CPU, 1 thread, 1 instance), loopback; median of {args.repeats} runs; requests, failures "
          "and wrong answers over all runs")
    print(f"{'server, configuration':26} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>6} {'requests':>8} "
          f"{'fail':>4} {'wrong':>5}")
    for label, row in rows.items():
        rate = "-" if "pausing" in label else f"{row['throughput_rps']:.1f}"
        cpu = f"{row['server_cpu_ms_per_request']:.2f}" if "server_cpu_ms_per_request" in row else "-"
        print(f"{label:26} {rate:>7} {row['p50_ms']:7.1f} {row['p99_ms']:7.1f} {cpu:>6} {row['requests_all']:8d} "
              f"{row['failures_all']:4d} {row['mismatches_all']:5d}")
    print("CPU ms: the server's CPU time per request (Triton: tritonserver and its Python-backend stubs)")
    print("\nbatch sizes formed (size: engine runs, all runs of the configuration)")
    for label, row in rows.items():
        if "batch_sizes" in row:
            print(f"{label:26} " + ", ".join(f"{size}: {count}" for size, count in row["batch_sizes"].items()))
    write_text(RESULTS, json.dumps({"clients": args.clients, "requests_per_client": args.requests,
                                    "repeats": args.repeats, "input": [1, 3, args.size, args.size],
                                    "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
