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

--swap measures model control instead (both servers in `--model-control-mode poll`): a steady
load on version 1 gives the steady p99; then, under the same load, version 2 is dropped into
the repository, and once it serves, a corrupt version 3. Reports the failed requests, wrong
answers, p99 during the changes against the steady p99, how long version 2 took to answer
after it was written, and the index entry of the refused version 3; writes
benchmarks/results/serve_swap.json (--out). --quick swaps a tiny ONNX model with few clients (a test
runs it); the full run swaps the quadratic MobileNetV3:

    python benchmarks/serve_load.py --swap [--quick] [--clients 16] [--requests 40] [--size 64]
                                    [--servers embedded,triton] [--poll-secs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
SWAP_RESULTS = Path(__file__).parent / "results" / "serve_swap.json"
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

    def __init__(self, repo: Path, control: tuple[str, ...] = ()) -> None:
        command = [sys.executable, "-c", START, "serve", "--repo", str(repo), "--port", "0", "--max-queue", "256",
                   *control]
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

    def __init__(self, repo: Path, control: tuple[str, ...] = ()) -> None:
        from qdeploy.serving.triton_install import install_triton
        from qdeploy.serving.triton_server import TritonServer

        self.server = TritonServer(repo, install=install_triton(), exit_timeout_s=10)
        self.server.command += list(control)  # the flags `qdeploy serve` passes on: Triton's own names
        self.server.start()
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


def shifted_copy(onnx_path: Path, dest: Path, shift: float) -> Path:
    """The model with `shift` added to its output: a "retrained" version whose answers differ."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_unshifted" if name == output else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(shift, np.float32), "qdeploy_shift"))
    model.graph.node.append(helper.make_node("Add", [f"{output}_unshifted", "qdeploy_shift"], [output]))
    onnx.save(model, str(dest))
    return dest


def tiny_onnx(dest: Path, width: int = 16) -> Path:
    """--quick: output = input @ W for a [batch, width] input; microseconds per request."""
    import onnx
    from onnx import TensorProto, helper

    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, width)).astype(np.float32),
                                          "weight")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "weight"], ["output"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(dest))
    return dest


def repository_index(address: str) -> list[dict]:
    request = urllib.request.Request(f"http://{address}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_index(address: str, condition, timeout_s: float) -> tuple[float | None, list[dict]]:
    """Poll the repository index until condition(entries by version) holds; (when, index) or (None, last index)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        index = repository_index(address)
        if condition({entry.get("version"): entry for entry in index if entry.get("name") == "swap"}):
            return time.perf_counter(), index
        if time.perf_counter() > deadline:
            return None, index
        time.sleep(0.1)


def drop_corrupt_version(repo: Path, source: int, version: int) -> None:
    """A copy of version `source` whose model file is garbage, moved in at once (a bad export slipped through)."""
    from qdeploy.atomic import staged_directory

    with staged_directory(repo / "swap" / str(version)) as stage:
        shutil.copytree(repo / "swap" / str(source), stage, dirs_exist_ok=True)
        (stage / "model.onnx").write_bytes(b"not an onnx file")


def swap_run(kind: str, repo: Path, v2_model: Path, batches, expected: dict, clients: int, requests: int,
             poll_secs: int, wait_s: float) -> dict:
    """One server in poll mode: steady load, then v2 and a corrupt v3 dropped in under load."""
    from qdeploy.serving import write_triton_model
    from qdeploy.serving.loadgen import run_load

    control = ("--model-control-mode", "poll", "--repository-poll-secs", str(poll_secs))
    server = SERVERS[kind](repo, control)
    try:
        steady = run_load(server.address, "swap", "input", "output", batches, {"1": expected["1"]},
                          clients=clients, requests_per_client=requests)
        stop, loads = threading.Event(), []
        load = threading.Thread(target=lambda: loads.append(run_load(
            server.address, "swap", "input", "output", batches, expected, clients=clients,
            requests_per_client=100_000, time_limit_s=4 * wait_s + 60, stop=stop)))
        load.start()
        time.sleep(1.0)
        dropped = time.perf_counter()
        write_triton_model(repo, "swap", v2_model, version=2, backend="python", engine_backend="ort-cpu", threads=1,
                           max_batch=8, max_queue_delay_us=2000)
        swapped, _ = wait_for_index(server.address, lambda v: v.get("2", {}).get("state") == "READY" and
                                    v.get("1", {}).get("state") != "READY", wait_s)
        time.sleep(poll_secs + 1.0)
        corrupted = time.perf_counter()
        drop_corrupt_version(repo, 2, 3)
        refused, index = wait_for_index(server.address, lambda v: v.get("3", {}).get("state") == "UNAVAILABLE",
                                        wait_s)
        time.sleep(poll_secs + 1.0)
        stop.set()
        load.join(wait_s + 60)
        final_index = repository_index(server.address)
    finally:
        server.stop()
    report = loads[0]
    first_v2 = min((t for t, v in report.answers if v == "2"), default=None)
    after_refusal = [v for t, v in report.answers if refused is not None and t > refused]
    return {"steady": steady.summary(), "swap": report.summary(),
            "failures": len(steady.failures) + len(report.failures), "first_failures": report.failures[:3],
            "mismatches": steady.mismatches + report.mismatches,
            "v2_first_answer_s": round(first_v2 - dropped, 2) if first_v2 else None,
            "v1_out_of_index_s": round(swapped - dropped, 2) if swapped else None,
            "v3_refused_s": round(refused - corrupted, 2) if refused else None,
            "answers_after_refusal": {v: after_refusal.count(v) for v in sorted(set(after_refusal))},
            "v3_entry": next((e for e in index if e.get("name") == "swap" and e.get("version") == "3"), None),
            "final_index": [e for e in final_index if e.get("name") == "swap"],
            "p99_ratio": round(report.percentile_ms(99) / steady.percentile_ms(99), 2)}


def swap_main(args: argparse.Namespace) -> None:
    """--swap: both servers, the same changes under the same load; a table and serve_swap.json."""
    from rich.console import Console
    from rich.table import Table

    from qdeploy.atomic import write_text
    from qdeploy.commands.tables import print_table
    from qdeploy.runtime import load_engine
    from qdeploy.serving import write_triton_model

    rows = {}
    with tempfile.TemporaryDirectory(prefix="qdeploy-serve-swap-") as tmp:
        tmp = Path(tmp)
        if args.quick:
            v1 = tiny_onnx(tmp / "v1.onnx")
            batches = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(8)]
        else:
            v1 = export_quadratic_mobilenet(tmp / "export", args.size)
            rng = np.random.default_rng(0)
            batches = [rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32) for _ in range(32)]
        v2 = shifted_copy(v1, tmp / "v2.onnx", 1.0)
        expected = {str(version): [load_engine(path, "ort-cpu", threads=1).infer(b)["output"] for b in batches]
                    for version, path in (("1", v1), ("2", v2))}
        for kind in args.servers.split(","):
            repo = tmp / f"repo-{kind}"
            write_triton_model(repo, "swap", v1, backend="python", engine_backend="ort-cpu", threads=1, max_batch=8,
                               max_queue_delay_us=2000)
            rows[kind] = swap_run(kind, repo, v2, batches, expected, args.clients, args.requests, args.poll_secs,
                                  args.wait_s)
    print(f"\n{args.clients} clients, poll mode ({args.poll_secs} s), {'tiny MatMul' if args.quick else 'MobileNetV3'}"
          " on the Python backend (ORT CPU, 1 thread); v2 dropped in, then a corrupt v3, under load")
    table = Table("server", "requests", "fail", "wrong", "steady p99 ms", "swap p99 ms", "ratio", "v2 after s",
                  "v3 refused s")
    for kind, row in rows.items():
        table.add_row(kind, str(row["steady"]["requests"] + row["swap"]["requests"]), str(row["failures"]),
                      str(row["mismatches"]), f"{row['steady']['p99_ms']:.1f}", f"{row['swap']['p99_ms']:.1f}",
                      f"{row['p99_ratio']:.2f}", str(row["v2_first_answer_s"]), str(row["v3_refused_s"]))
    print_table(Console(), table)
    for kind, row in rows.items():
        print(f"{kind}: v3 in the index: {row['v3_entry']}")
    write_text(args.out, json.dumps({"clients": args.clients, "quick": args.quick, "poll_secs": args.poll_secs,
                                     "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="load runs per server; the median is reported")
    parser.add_argument("--servers", default="embedded,triton", help="comma list of embedded, triton")
    parser.add_argument("--pausing-clients", type=int, default=32, help="clients of the pause run (0 skips it)")
    parser.add_argument("--swap", action="store_true", help="model control: versions swapped under load")
    parser.add_argument("--quick", action="store_true", help="with --swap: a tiny model, 4 clients (seconds)")
    parser.add_argument("--poll-secs", type=int, default=2, help="with --swap: --repository-poll-secs")
    parser.add_argument("--wait-s", type=float, default=120.0, help="with --swap: longest wait for each change")
    parser.add_argument("--out", type=Path, default=SWAP_RESULTS, help="with --swap: the JSON results file")
    args = parser.parse_args()
    if args.swap:
        if args.quick:
            args.clients, args.requests, args.poll_secs = min(args.clients, 4), min(args.requests, 20), 1
        swap_main(args)
        return
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
