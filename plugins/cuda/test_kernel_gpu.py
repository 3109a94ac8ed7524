#!/usr/bin/env python3
"""GPU check and benchmark of the fused quadratic-branch kernels against PyTorch.

    python3 plugins/cuda/test_kernel_gpu.py --check --bench --json out.json

--check builds plugins/cuda/atrous_quad.cu with nvcc into a temporary directory, loads it with
ctypes and compares it (and the Triton kernel in plugins/triton, when triton imports) with the
PyTorch reference on random shapes in float32 and float16, including the launcher's error
codes. --bench times both kernels and the decomposed PyTorch branch (cuDNN convolutions, a
multiply and the 1x1 projection) with CUDA events on real layer shapes, each call after an L2
flush, and prints achieved bandwidth and the fraction of the roofline time reached.

Needs only torch and nvcc (triton optional) on the GPU machine: no qdeploy, no TensorRT.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TRITON_FILE = HERE.parent / "triton" / "atrous_quad_triton.py"

# Roofline peaks assumed for an H100 SXM (vendor figures): HBM3 bandwidth and non-tensor-core
# FMA throughput. The measured device-to-device copy rate is reported beside them.
PEAKS = {"hbm_bytes_per_s": 3.35e12, "float32_flop_per_s": 67e12, "float16_flop_per_s": 134e12}

# Status codes of atrousQuadForward (atrous_quad.cuh).
SUCCESS, INVALID_ARGUMENT, RANK_TOO_LARGE, TILE_TOO_LARGE = 0, 1, 2, 3
MAX_RANK_PER_GROUP = 64

# |y - ref| <= atol * max|ref| + rtol * |ref|, ref computed in float64 from the same (rounded)
# inputs; float16 adds the output's rounding (2**-11 relative) to fp32 accumulation.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3)}


class Params(ctypes.Structure):
    """Mirror of AtrousQuadParams: int32 fields in declaration order."""

    _fields_ = [(name, ctypes.c_int32) for name in (
        "dtype", "batch", "in_channels", "in_height", "in_width", "rank", "out_channels", "groups",
        "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
        "pad_top", "pad_left", "pad_bottom", "pad_right",
    )]


@dataclass(frozen=True)
class Shape:
    """One quadratic branch: input [batch, cin, height, width], pads (top, left, bottom, right)."""

    batch: int
    cin: int
    height: int
    width: int
    rank: int
    cout: int
    groups: int
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (3, 3)
    pads: tuple[int, int, int, int] = (3, 3, 3, 3)
    has_u: bool = True
    biases: bool = True

    @property
    def out_size(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        top, left, bottom, right = self.pads
        return ((self.height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (self.width + left + right - dw * (kw - 1) - 1) // sw + 1)


def make_tensors(shape: Shape, dtype: torch.dtype, device: str, seed: int) -> dict[str, torch.Tensor | None]:
    """Inputs with unit-scale activations (weights ~ 1/sqrt(fan-in)), so float16 never overflows."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    cin_g, rg = shape.cin // shape.groups, shape.rank // shape.groups
    fan_in = cin_g * shape.kernel[0] * shape.kernel[1]
    w_size = (shape.rank, cin_g, *shape.kernel)
    return {
        "x": randn(shape.batch, shape.cin, shape.height, shape.width),
        "wa": randn(*w_size, scale=fan_in ** -0.5),
        "ba": randn(shape.rank, scale=0.5) if shape.biases else None,
        "wb": randn(*w_size, scale=fan_in ** -0.5),
        "bb": randn(shape.rank, scale=0.5) if shape.biases else None,
        "wu": randn(shape.cout, rg, 1, 1, scale=rg ** -0.5) if shape.has_u else None,
        # No U, no output bias: AtrousQuadProduct's contract (the Triton launcher refuses one).
        "bu": randn(shape.cout, scale=0.5) if shape.biases and shape.has_u else None,
    }


def torch_branch(t: dict[str, torch.Tensor | None], shape: Shape) -> torch.Tensor:
    """The decomposed branch as PyTorch (and an exported ONNX graph) runs it."""
    top, left, bottom, right = shape.pads
    x, padding = t["x"], (top, left)
    if (top, left) != (bottom, right):  # asymmetric pads need an explicit Pad node
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    a = F.conv2d(x, t["wa"], t["ba"], shape.stride, padding, shape.dilation, shape.groups)
    b = F.conv2d(x, t["wb"], t["bb"], shape.stride, padding, shape.dilation, shape.groups)
    product = a * b
    if t["wu"] is not None:
        return F.conv2d(product, t["wu"], t["bu"], groups=shape.groups)
    return product if t["bu"] is None else product + t["bu"].view(1, -1, 1, 1)


def reference(t: dict[str, torch.Tensor | None], shape: Shape) -> torch.Tensor:
    return torch_branch({k: v.double() if v is not None else None for k, v in t.items()}, shape)


def error_over_tolerance(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    """max |y - ref| / (atol * max|ref| + rtol * |ref|): <= 1 passes; NaN when y has NaNs."""
    atol, rtol = TOLERANCE[dtype]
    bound = atol * ref.abs().max().item() + rtol * ref.abs()
    return ((y.double() - ref).abs() / bound.clamp_min(1e-30)).max().item()


def build_library(build_dir: Path, arch: str) -> Path:
    """atrous_quad.cu compiled by nvcc into a shared library for compute capability `arch` ("90")."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    lib = build_dir / "libatrous_quad.so"
    cmd = [nvcc, "-O3", "-shared", "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}",
           str(HERE / "atrous_quad.cu"), "-o", str(lib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvcc failed with status {done.returncode}: {done.stderr.strip()}")
    return lib


class CudaKernel:
    """atrous_quad.cu built with nvcc for the current GPU and loaded through ctypes."""

    def __init__(self, build_dir: Path) -> None:
        major, minor = torch.cuda.get_device_capability()
        self.lib = ctypes.CDLL(str(build_library(build_dir, f"{major}{minor}")))
        self.lib.atrousQuadForward.restype = ctypes.c_int
        self.lib.atrousQuadForward.argtypes = [ctypes.POINTER(Params)] + [ctypes.c_void_p] * 9
        self.lib.atrousQuadStatusString.restype = ctypes.c_char_p
        self.lib.atrousQuadStatusString.argtypes = [ctypes.c_int]

    def params(self, shape: Shape, dtype: torch.dtype) -> Params:
        return Params(
            0 if dtype == torch.float32 else 1, shape.batch, shape.cin, shape.height, shape.width,
            shape.rank, shape.cout if shape.has_u else shape.rank, shape.groups, *shape.kernel,
            *shape.stride, *shape.dilation, *shape.pads,
        )

    def status(self, params: Params, t: dict[str, torch.Tensor | None], y: torch.Tensor) -> int:
        ptrs = [t[k].data_ptr() if t[k] is not None else None for k in ("x", "wa", "ba", "wb", "bb", "wu", "bu")]
        return self.lib.atrousQuadForward(ctypes.byref(params), *ptrs, y.data_ptr(),
                                          torch.cuda.current_stream().cuda_stream)

    def __call__(self, t: dict[str, torch.Tensor | None], shape: Shape) -> torch.Tensor:
        x = t["x"]
        y = torch.empty(shape.batch, shape.cout if shape.has_u else shape.rank, *shape.out_size,
                        dtype=x.dtype, device=x.device)
        status = self.status(self.params(shape, x.dtype), t, y)
        if status != SUCCESS:
            raise RuntimeError(f"atrousQuadForward: {self.lib.atrousQuadStatusString(status).decode()}")
        return y


def load_triton():
    """The Triton launcher, or None with the reason printed when triton is unusable here."""
    try:
        spec = importlib.util.spec_from_file_location("atrous_quad_triton", TRITON_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        print(f"triton kernel skipped: {exc}")
        return None

    def run(t: dict[str, torch.Tensor | None], shape: Shape) -> torch.Tensor:
        return module.atrous_quad_triton(t["x"], t["wa"], t["ba"], t["wb"], t["bb"], t["wu"], t["bu"],
                                         shape.stride, shape.dilation, shape.pads, shape.groups)

    return run


def random_shape(rng: random.Random) -> Shape:
    kind = rng.choice(["depthwise", "depthwise-u", "dense", "grouped", "identity"])
    kernel = (rng.randint(1, 4), rng.randint(1, 4)) if rng.random() < 0.3 else (3, 3)
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 4), rng.randint(1, 4))
    pads = tuple(rng.randint(0, 5) for _ in range(4))
    height, width = rng.randint(1, 40), rng.randint(1, 70)
    batch = rng.randint(1, 4)
    if kind in ("depthwise", "depthwise-u"):
        groups = cin = rng.randint(1, 48)
        r = 1 if kind == "depthwise" else rng.randint(1, 4)
        rank, cout, has_u = cin * r, cin, kind == "depthwise-u"
    elif kind == "identity":  # no U with several ranks per group
        groups = rng.randint(1, 4)
        cin, rank = groups * rng.randint(1, 6), groups * rng.randint(1, 6)
        cout, has_u = rank, False
    else:
        groups = 1 if kind == "dense" else rng.randint(2, 6)
        cin = groups * rng.randint(1, 24)
        rank = groups * rng.randint(1, MAX_RANK_PER_GROUP)
        cout, has_u = groups * rng.randint(1, 24), True
    shape = Shape(batch, cin, height, width, rank, cout, groups, kernel, stride, dilation, pads,
                  has_u, biases=rng.random() < 0.8)
    # Keep the output non-empty.
    if min(shape.out_size) < 1:
        return random_shape(rng)
    return shape


def tiny_shape(rng: random.Random) -> Shape:
    """A small layer of every kind, for the Triton interpreter (it runs each program instance in Python)."""
    kind = rng.choice(["dense", "grouped", "depthwise", "depthwise-u", "product"])
    kernel = (rng.randint(1, 3), rng.randint(1, 3))
    if kind == "dense":
        groups, cin, rank, cout = 1, rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 5)
    elif kind == "grouped":
        groups = rng.randint(2, 3)
        cin, rank, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 4), groups * rng.randint(1, 3)
    elif kind == "product":
        groups = rng.randint(1, 3)
        cin, rank = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
        cout = rank
    else:  # depthwise: one group per channel, r ranks each
        groups = cin = cout = rng.randint(1, 6)
        rank = cin * (1 if kind == "depthwise" else rng.randint(1, 3))
    shape = Shape(batch=rng.randint(1, 2), cin=cin, height=rng.randint(3, 12), width=rng.randint(3, 12), rank=rank,
                  cout=cout, groups=groups, kernel=kernel, stride=(rng.randint(1, 3), rng.randint(1, 3)),
                  dilation=(rng.randint(1, 4), rng.randint(1, 4)), pads=tuple(rng.randint(0, 4) for _ in range(4)),
                  has_u=kind != "product", biases=rng.random() < 0.8)
    return shape if min(shape.out_size) >= 1 else tiny_shape(rng)


# Fixed shapes that hit specific paths: every rank bucket's edge, large batches, U chunking,
# tiles shrunk for huge receptive fields, and the real layers of the benchmark at batch 2.
EDGE_SHAPES = [
    Shape(2, 8, 17, 19, 8 * 64, 8, 8),                                   # rank/group 64 (cap)
    Shape(2, 16, 9, 33, 16 * 33, 16, 16),                                # rank/group 33 -> 64 bucket
    Shape(1, 64, 20, 20, 48, 512, 1),                                     # Cout/g 512: U in chunks
    Shape(3, 4, 50, 45, 8, 4, 2, kernel=(7, 5), dilation=(9, 11), pads=(27, 22, 27, 22)),
    Shape(1, 2, 300, 200, 2, 2, 2, kernel=(3, 1), dilation=(120, 1), pads=(0, 0, 0, 0), has_u=False),
    Shape(600, 3, 5, 6, 3, 3, 3, has_u=False),                           # many images
    Shape(2, 96, 112, 112, 96, 96, 96, stride=(2, 2), pads=(2, 2, 3, 3), has_u=False),
    Shape(2, 144, 56, 56, 144, 144, 144, has_u=False),
    Shape(2, 1152, 7, 7, 1152, 1152, 1152, has_u=False),
    Shape(2, 64, 56, 56, 8, 64, 1),
    Shape(2, 144, 56, 56, 288, 144, 144),                                 # depthwise r = 2
]


def check_shapes(impls: dict, shapes: list[Shape], device: str, limits: dict[str, int] | None = None,
                 dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16)) -> dict:
    """Every impl against the float64 reference on `shapes` (impl `k` on the first limits[k] only).

    The one comparison loop of the GPU run, the CPU interpreter run and the evidence kit
    (benchmarks/gpu_evidence.py): per impl the worst error over tolerance, and every failure.
    """
    limits = limits or {}
    failures: list[dict] = []
    worst = dict.fromkeys(impls, 0.0)
    runs = 0
    for index, shape in enumerate(shapes):
        for dtype in dtypes:
            t = make_tensors(shape, dtype, device, seed=index)
            ref = reference(t, shape)
            for name, impl in impls.items():
                if index >= limits.get(name, len(shapes)):
                    continue
                excess = error_over_tolerance(impl(t, shape), ref, dtype)
                worst[name] = max(worst[name], excess)
                runs += 1
                if not excess <= 1.0:  # also catches NaN
                    failures.append({"impl": name, "dtype": str(dtype), "shape": asdict(shape),
                                     "error_over_tolerance": excess})
    return {"shapes": len(shapes), "runs": runs, "worst_error_over_tolerance": worst, "failures": failures}


def check(cuda: CudaKernel, triton_run, count: int, triton_count: int) -> dict:
    rng = random.Random(2024)
    shapes = EDGE_SHAPES + [random_shape(rng) for _ in range(count)]
    impls = {"cuda": cuda} | ({"triton": triton_run} if triton_run else {})
    # Triton compiles one kernel per kernel size, flags and rank bucket: check it on fewer shapes.
    result = check_shapes(impls, shapes, "cuda", {"triton": len(EDGE_SHAPES) + triton_count})
    result["failures"] += check_status_codes(cuda)
    torch.cuda.synchronize()
    print(f"check: {result['runs']} runs on {len(shapes)} shapes x 2 dtypes, {len(result['failures'])} failures; "
          f"worst error / tolerance: " + ", ".join(f"{k} {v:.3f}" for k, v in result["worst_error_over_tolerance"].items()))
    for failure in result["failures"][:20]:
        print("  FAIL", failure)
    return result


def check_status_codes(cuda: CudaKernel) -> list[dict]:
    """Arguments the launcher must refuse with a specific code, without launching anything."""
    cases = [
        ("rank per group over the cap", Shape(1, 2, 8, 8, 2 * 65, 2, 2), RANK_TOO_LARGE),
        ("groups not dividing Cin", Shape(1, 3, 8, 8, 4, 4, 2), INVALID_ARGUMENT),
        ("identity U with Cout != R", Shape(1, 4, 8, 8, 4, 8, 4, has_u=False), INVALID_ARGUMENT),
        ("empty output", Shape(1, 4, 2, 2, 4, 4, 4, pads=(0, 0, 0, 0)), INVALID_ARGUMENT),
        ("patch wider than shared memory", Shape(1, 1, 1, 14000, 1, 1, 1, kernel=(1, 2),
                                                 dilation=(1, 13000), pads=(0, 0, 0, 0)), TILE_TOO_LARGE),
    ]
    failures = []
    for label, shape, expected in cases:
        dummy = torch.zeros(1, device="cuda")
        tensors = {k: dummy for k in ("x", "wa", "ba", "wb", "bb", "wu", "bu")}
        if not shape.has_u:
            tensors["wu"] = None
        params = cuda.params(shape, torch.float32)
        params.out_channels = shape.cout  # keep the inconsistent Cout for the identity case
        status = cuda.status(params, tensors, dummy)
        if status != expected:
            failures.append({"impl": "cuda", "status_case": label, "expected": expected, "got": status})
    return failures


def layer_shapes(batch: int) -> list[tuple[str, Shape]]:
    """EfficientNet-Lite0 depthwise layers (224x224 input; r = 1, no U) and a ResNet-18 conv.

    TF 'same' padding for the k=3, d=3 factor convs: 3 each side at stride 1; top/left 2,
    bottom/right 3 at stride 2.
    """
    dw = lambda c, hw, s: Shape(batch, c, hw, hw, c, c, c, stride=(s, s),  # noqa: E731
                                pads=(3, 3, 3, 3) if s == 1 else (2, 2, 3, 3), has_u=False)
    return [
        ("lite0 dw C=96 112->56 s2", dw(96, 112, 2)),
        ("lite0 dw C=144 56x56", dw(144, 56, 1)),
        ("lite0 dw C=240 28x28", dw(240, 28, 1)),
        ("lite0 dw C=672 14x14", dw(672, 14, 1)),
        ("lite0 dw C=1152 7x7", dw(1152, 7, 1)),
        ("resnet18 C=64 56x56 R=8", Shape(batch, 64, 56, 56, 8, 64, 1)),
    ]


def cost(shape: Shape, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOPs, minimum DRAM bytes): x read once, all weights and biases, y written once."""
    hout, wout = shape.out_size
    pixels = shape.batch * hout * wout
    cin_g, rg = shape.cin // shape.groups, shape.rank // shape.groups
    cout = shape.cout if shape.has_u else shape.rank
    taps = shape.kernel[0] * shape.kernel[1]
    flops = pixels * (4 * shape.rank * cin_g * taps + shape.rank + (2 * cout * rg if shape.has_u else 0))
    weights = 2 * shape.rank * cin_g * taps + (cout * rg if shape.has_u else 0)
    biases = (2 * shape.rank + (cout if shape.has_u else 0)) if shape.biases else 0
    elements = shape.batch * shape.cin * shape.height * shape.width + weights + biases + pixels * cout
    return float(flops), float(elements * torch.finfo(dtype).bits // 8)


def time_ms(fn, flush: torch.Tensor, iters: int) -> float:
    """Median milliseconds of `fn`, each call timed with CUDA events after an L2 flush."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(flush: torch.Tensor) -> float:
    """Device-to-device copy rate in bytes/s (read + write), a practical HBM ceiling."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), flush, 10)
    return 2 * src.numel() / (ms * 1e-3)


def bench(cuda: CudaKernel, triton_run, batch: int, iters: int) -> dict:
    torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithms
    flush = torch.empty(4 * torch.cuda.get_device_properties(0).L2_cache_size // 4, dtype=torch.float32,
                        device="cuda")
    copy_bps = copy_bandwidth(flush)
    impls = {"cuda": cuda} | ({"triton": triton_run} if triton_run else {}) | {"torch": torch_branch}
    rows = []
    for label, shape in layer_shapes(batch):
        for dtype in (torch.float32, torch.float16):
            t = make_tensors(shape, dtype, "cuda", seed=0)
            flops, nbytes = cost(shape, dtype)
            peak = PEAKS["float32_flop_per_s" if dtype == torch.float32 else "float16_flop_per_s"]
            row = {"layer": label, "dtype": str(dtype).removeprefix("torch."), "shape": asdict(shape),
                   "flops": flops, "bytes": nbytes, "bound": "memory" if nbytes / copy_bps > flops / peak else "compute",
                   # Vendor HBM peak, and the copy rate this run measured (the practical ceiling).
                   "roofline_ms": max(nbytes / PEAKS["hbm_bytes_per_s"], flops / peak) * 1e3,
                   "roofline_copy_ms": max(nbytes / copy_bps, flops / peak) * 1e3, "ms": {}}
            for name, impl in impls.items():
                row["ms"][name] = time_ms(lambda: impl(t, shape), flush, iters)
            rows.append(row)

    names = list(impls)
    print(f"\nbench: batch {batch}, median of {iters} calls after an L2 flush; roofline at the measured copy rate "
          f"{copy_bps / 1e9:.0f} GB/s and {PEAKS['float32_flop_per_s'] / 1e12:.0f}/"
          f"{PEAKS['float16_flop_per_s'] / 1e12:.0f} TFLOP/s fp32/fp16")
    header = f"{'layer':<26}{'dtype':<9}{'MB':>8}{'GFLOP':>8}{'roof us':>9}" + "".join(
        f"{n + ' us':>11}" for n in names) + f"{'cuda GB/s':>11}{'cuda %roof':>11}{'vs torch':>9}"
    print(header)
    for row in rows:
        ms = row["ms"]
        print(f"{row['layer']:<26}{row['dtype']:<9}{row['bytes'] / 1e6:>8.1f}{row['flops'] / 1e9:>8.2f}"
              f"{row['roofline_copy_ms'] * 1e3:>9.1f}" + "".join(f"{ms[n] * 1e3:>11.1f}" for n in names)
              + f"{row['bytes'] / (ms['cuda'] * 1e-3) / 1e9:>11.0f}"
              + f"{100 * row['roofline_copy_ms'] / ms['cuda']:>10.0f}%{ms['torch'] / ms['cuda']:>8.1f}x")
    return {"batch": batch, "iters": iters, "copy_bytes_per_s": copy_bps, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with PyTorch on random shapes")
    parser.add_argument("--bench", action="store_true", help="time real layer shapes")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--random-shapes", type=int, default=300, help="random shapes for the CUDA kernel")
    parser.add_argument("--triton-shapes", type=int, default=60, help="of those, how many for Triton")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the benchmark")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not (args.check or args.bench):
        parser.error("give --check and/or --bench")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run")
        return 1

    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "peaks": PEAKS}
    with tempfile.TemporaryDirectory() as build_dir:
        cuda = CudaKernel(Path(build_dir))
    triton_run = load_triton()
    if args.check:
        result["check"] = check(cuda, triton_run, args.random_shapes, args.triton_shapes)
    if args.bench:
        result["bench"] = bench(cuda, triton_run, args.batch, args.iters)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if args.check and result["check"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
