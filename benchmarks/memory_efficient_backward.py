"""Peak training memory: plain autograd vs the recomputing backward of the product term.

Each mode runs in a fresh subprocess (so peak RSS is its own) doing forward + backward of
the adapted built-in EfficientNet-Lite0 architecture. Reported per mode:
- saved_activation_mib: bytes autograd keeps for backward (exact, from saved-tensor hooks);
- peak_mib: CUDA max_memory_allocated on GPU, process peak RSS on CPU.
Prints a table and writes JSON:  python benchmarks/memory_efficient_backward.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MODES = ("plain", "memory_efficient")


def measure(mode: str, device: str, batch: int, size: int, depthwise_rank: int) -> dict:
    """One forward + backward in `mode`: saved activations (exact) and the peak (see the docstring).

    The GPU evidence kit calls it in-process too; there the CPU peak (process RSS) is not
    per-mode, so only the CUDA peak is meaningful.
    """
    import torch

    from qdeploy.adaptation import adapt
    from qdeploy.layers import QuadConfig
    from qdeploy.models.sources import load_base_model

    torch.manual_seed(0)
    model = load_base_model("efficientnet_lite0", pretrained=False)
    config = QuadConfig(depthwise_rank=depthwise_rank, memory_efficient=mode == "memory_efficient")
    adapt(model, config=config, count_model_flops=False)
    model.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if not isinstance(t, torch.nn.Parameter):
            saved += t.numel() * t.element_size()
        return t

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).logsumexp(-1).mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "saved_activation_mib": saved / 2**20, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--depthwise-rank", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/memory_efficient_backward.json"))
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.device, args.batch, args.size, args.depthwise_rank)))
        return
    rows = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--worker", mode, "--device", args.device, "--batch", str(args.batch),
               "--size", str(args.size), "--depthwise-rank", str(args.depthwise_rank)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    plain, efficient = rows
    result = {
        "model": "tf_efficientnet_lite0 (all conv_dw quadratic)", "device": args.device, "batch": args.batch,
        "input_size": args.size, "depthwise_rank": args.depthwise_rank, "rows": rows,
        "saved_activation_ratio": efficient["saved_activation_mib"] / plain["saved_activation_mib"],
        "peak_ratio": efficient["peak_mib"] / plain["peak_mib"],
    }
    print(f"{'mode':<18}{'saved activations MiB':>22}{'peak MiB':>12}")
    for row in rows:
        print(f"{row['mode']:<18}{row['saved_activation_mib']:>22.1f}{row['peak_mib']:>12.1f}")
    print(f"memory_efficient / plain: activations {result['saved_activation_ratio']:.3f}, peak {result['peak_ratio']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
