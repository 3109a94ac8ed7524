"""Fused quadratic branch y = U(A(x) * B(x)) as one Triton kernel.

A_j = ba[j] + sum_{ci in group(j), kh, kw} wa[j, ci, kh, kw] * x[n, ci, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]
(zero outside the input), B_j likewise with wb and bb, and y[n, co] = bu[co] + sum_j wu[co, j] A_j B_j
over the ranks j of co's group; U is the identity when `wu` is None (then Cout == R).

One program owns (image n, group g, a block of output pixels). It loops over the group's input
channels and the taps, loads each input vector once and feeds it to both A and B (all ranks of
the group at once, as an outer product), accumulates in float32, and applies U per output
channel, so A(x), B(x) and their product never reach device memory. Same maths as the CUDA
kernel in plugins/cuda; this one also runs under TRITON_INTERPRET=1 on a CPU (tests use that).

Depends on torch and triton only, so that it can be copied next to a TensorRT plugin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Ranks of a group held in one program's registers: [BLOCK_P, next_pow2(R/g)] accumulators
# for A and for B. Matches the CUDA kernel's ATROUS_QUAD_MAX_RANK_PER_GROUP.
MAX_RANK_PER_GROUP = 64


# The body calls no @triton.jit helper of triton.language (tl.cdiv, tl.sum, tl.zeros): under
# TRITON_INTERPRET=1 those are interpretable only if triton was imported after the variable
# was set, while this file's own functions (decorated when it is loaded) always are.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _atrous_quad_body(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, wu_ptr, bu_ptr, y_ptr, height, width, hout, wout,
    GROUPS: tl.constexpr, CIN_G: tl.constexpr, RG: tl.constexpr, COUT_G: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DILATION_H: tl.constexpr, DILATION_W: tl.constexpr,
    PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr, KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
    HAS_BA: tl.constexpr, HAS_BB: tl.constexpr, HAS_U: tl.constexpr, HAS_BU: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """The fused branch for one program; layer geometry is constexpr, image sizes are not."""
    groups = GROUPS
    cin_g = CIN_G
    rg = RG
    cout_g = COUT_G
    stride_h = STRIDE_H
    stride_w = STRIDE_W
    dilation_h = DILATION_H
    dilation_w = DILATION_W
    pad_top = PAD_TOP
    pad_left = PAD_LEFT
    # 1-D grid, pixel blocks fastest so that neighbouring programs share their halo in cache.
    pid = tl.program_id(0)
    pixel_blocks = (hout * wout + BLOCK_P - 1) // BLOCK_P
    block = pid % pixel_blocks
    image_group = pid // pixel_blocks
    group = image_group % groups
    n = (image_group // groups).to(tl.int64)  # batch offsets can pass 2**31 elements

    offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    p_live = offs_p < hout * wout
    oh = offs_p // wout
    ow = offs_p % wout
    offs_r = tl.arange(0, BLOCK_R)
    r_live = offs_r < rg
    rank = group * rg + offs_r

    acc_a = tl.full([BLOCK_P, BLOCK_R], 0.0, tl.float32)
    acc_b = tl.full([BLOCK_P, BLOCK_R], 0.0, tl.float32)
    if HAS_BA:
        acc_a += tl.load(ba_ptr + rank, mask=r_live, other=0.0).to(tl.float32)[None, :]
    if HAS_BB:
        acc_b += tl.load(bb_ptr + rank, mask=r_live, other=0.0).to(tl.float32)[None, :]

    plane = height * width
    x_group = x_ptr + (n * (groups * cin_g) + group * cin_g) * plane
    taps: tl.constexpr = KERNEL_H * KERNEL_W
    for ci in range(0, cin_g):
        x_channel = x_group + ci * plane
        w_channel = (rank * cin_g + ci) * taps
        for kh in tl.static_range(KERNEL_H):
            ih = oh * stride_h - pad_top + kh * dilation_h
            row_inside = p_live & (ih >= 0) & (ih < height)
            for kw in tl.static_range(KERNEL_W):
                iw = ow * stride_w - pad_left + kw * dilation_w
                inside = row_inside & (iw >= 0) & (iw < width)
                # One load of x per tap, shared by both factors and all ranks.
                xv = tl.load(x_channel + ih * width + iw, mask=inside, other=0.0).to(tl.float32)[:, None]
                wa = tl.load(wa_ptr + w_channel + (kh * KERNEL_W + kw), mask=r_live, other=0.0)
                wb = tl.load(wb_ptr + w_channel + (kh * KERNEL_W + kw), mask=r_live, other=0.0)
                acc_a += xv * wa.to(tl.float32)[None, :]
                acc_b += xv * wb.to(tl.float32)[None, :]

    product = acc_a * acc_b  # padded ranks are 0 * 0
    out_plane = hout * wout
    y_group = y_ptr + (n * (groups * cout_g) + group * cout_g) * out_plane
    if HAS_U:
        for co in range(0, cout_g):
            u = tl.load(wu_ptr + (group * cout_g + co) * rg + offs_r, mask=r_live, other=0.0)
            out = tl.reduce(product * u.to(tl.float32)[None, :], 1, _add)
            if HAS_BU:
                out += tl.load(bu_ptr + group * cout_g + co).to(tl.float32)
            tl.store(y_group + co * out_plane + offs_p, out.to(y_ptr.dtype.element_ty), mask=p_live)
    else:  # identity U: output channel j of the group is rank product j (cout_g == rg)
        if HAS_BU:
            product += tl.load(bu_ptr + rank, mask=r_live, other=0.0).to(tl.float32)[None, :]
        tl.store(y_group + offs_r[None, :] * out_plane + offs_p[:, None],
                 product.to(y_ptr.dtype.element_ty), mask=p_live[:, None] & r_live[None, :])


# Entry points. Their pointer and scalar order is (inputs..., image sizes..., output), the
# order in which TensorRT's AOT Python plugins pass arguments (inputs, extra scalar args,
# outputs), so that the same kernels serve eager launches and engines without PTX rewriting.
@triton.jit
def atrous_quad_conv_kernel(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, wu_ptr, bu_ptr, height, width, hout, wout, y_ptr,
    GROUPS: tl.constexpr, CIN_G: tl.constexpr, RG: tl.constexpr, COUT_G: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DILATION_H: tl.constexpr, DILATION_W: tl.constexpr,
    PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr, KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
    HAS_BA: tl.constexpr, HAS_BB: tl.constexpr, HAS_BU: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """y = U(A(x) * B(x)) (AtrousQuadConv; QuadLinear as a 1x1 conv on 1x1 images)."""
    _atrous_quad_body(x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, wu_ptr, bu_ptr, y_ptr, height, width, hout, wout,
                      GROUPS, CIN_G, RG, COUT_G, STRIDE_H, STRIDE_W, DILATION_H, DILATION_W, PAD_TOP, PAD_LEFT,
                      KERNEL_H, KERNEL_W, HAS_BA, HAS_BB, True, HAS_BU, BLOCK_P, BLOCK_R)


@triton.jit
def atrous_quad_product_kernel(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, height, width, hout, wout, y_ptr,
    GROUPS: tl.constexpr, CIN_G: tl.constexpr, RG: tl.constexpr, COUT_G: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DILATION_H: tl.constexpr, DILATION_W: tl.constexpr,
    PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr, KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
    HAS_BA: tl.constexpr, HAS_BB: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """y = A(x) * B(x) (AtrousQuadProduct: no U, no output bias)."""
    _atrous_quad_body(x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, wa_ptr, wa_ptr, y_ptr, height, width, hout, wout,
                      GROUPS, CIN_G, RG, COUT_G, STRIDE_H, STRIDE_W, DILATION_H, DILATION_W, PAD_TOP, PAD_LEFT,
                      KERNEL_H, KERNEL_W, HAS_BA, HAS_BB, False, False, BLOCK_P, BLOCK_R)



def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or pair, got {value!r}")
    return pair  # type: ignore[return-value]


def output_extent(size: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int) -> int:
    """Hout or Wout: floor((size + pads - dilation * (kernel - 1) - 1) / stride) + 1.

    Only +, -, * and // touch `size`, so TensorRT's symbolic shape expressions work too
    (the plugin's shape function passes them).
    """
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def layer_constants(cin: int, rank: int, cout: int, groups: int, kernel: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int], pads_top_left: tuple[int, int],
                    has_ba: bool = True, has_bb: bool = True, has_bu: bool | None = True,
                    block_pixels: int = 64) -> dict[str, int | bool]:
    """The constexpr arguments of one layer's kernel (what its compiled PTX is specialised on).

    has_bu None: the product kernel, which has no output bias and no HAS_BU argument.
    """
    return ({} if has_bu is None else {"HAS_BU": has_bu}) | {
        "GROUPS": groups, "CIN_G": cin // groups, "RG": rank // groups, "COUT_G": cout // groups,
        "STRIDE_H": stride[0], "STRIDE_W": stride[1], "DILATION_H": dilation[0], "DILATION_W": dilation[1],
        "PAD_TOP": pads_top_left[0], "PAD_LEFT": pads_top_left[1], "KERNEL_H": kernel[0], "KERNEL_W": kernel[1],
        "HAS_BA": has_ba, "HAS_BB": has_bb, "BLOCK_P": block_pixels, "BLOCK_R": triton.next_power_of_2(rank // groups),
    }


def program_count(batch, hout, wout, groups: int, block_pixels: int):
    """Grid size: one program per (image, group, block of output pixels).

    Written with // and + only so that it also evaluates on TensorRT's symbolic shape
    expressions (an AOT plugin's launch parameters).
    """
    return batch * ((hout * wout + (block_pixels - 1)) // block_pixels) * groups


IMAGE_ARGS = ("height", "width", "hout", "wout")


def compile_ptx(kernel, element_type: str, constants: dict, target=None):
    """Compile one layer's kernel ahead of time (Triton's compiled kernel: .asm["ptx"], .metadata).

    element_type: "fp32" or "fp16" for every tensor. The parameters keep the entry point's
    order (input pointers, the four image sizes as int32, the output pointer); Triton appends
    its scratch pointers after them, unused while metadata.global_scratch_size is 0. `target`
    (a triton GPUTarget) compiles for a GPU other than the current one, or with none present.
    """
    names = kernel.arg_names
    pointers = names.index(IMAGE_ARGS[0])
    signature = {name: f"*{element_type}" for name in names[:pointers]}
    signature |= {name: "i32" for name in IMAGE_ARGS}
    signature[names[pointers + len(IMAGE_ARGS)]] = f"*{element_type}"
    signature |= {name: "constexpr" for name in constants}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=target) if target is not None else triton.compile(source)


def atrous_quad_triton(
    x: torch.Tensor,
    wa: torch.Tensor,
    ba: torch.Tensor | None,
    wb: torch.Tensor,
    bb: torch.Tensor | None,
    wu: torch.Tensor | None,
    bu: torch.Tensor | None,
    stride: int | tuple[int, int],
    dilation: int | tuple[int, int],
    pads: tuple[int, int, int, int] | list[int],
    groups: int,
    block_pixels: int = 64,
) -> torch.Tensor:
    """y = U(A(x) * B(x)) for NCHW `x`; `pads` in ONNX order (top, left, bottom, right).

    Shapes: wa, wb [R, Cin/g, kH, kW]; ba, bb, [R]; wu [Cout, R/g, 1, 1] or None (no U:
    y = A(x) * B(x), Cout == R, and then no bu); bu [Cout]. Every tensor shares x's dtype and device; y has x's dtype and is
    accumulated in float32.
    """
    stride_h, stride_w = _pair(stride, "stride")
    dilation_h, dilation_w = _pair(dilation, "dilation")
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in pads)
    if min(pad_top, pad_left, pad_bottom, pad_right) < 0:
        raise ValueError(f"pads must be >= 0, got {tuple(pads)}")
    batch, cin, height, width = x.shape
    rank, cin_g, kernel_h, kernel_w = wa.shape
    if wb.shape != wa.shape:
        raise ValueError(f"wa {tuple(wa.shape)} and wb {tuple(wb.shape)} differ")
    if groups < 1 or cin % groups or rank % groups or cin_g * groups != cin:
        raise ValueError(f"groups={groups} does not fit Cin={cin}, R={rank}, Cin/g={cin_g}")
    rg = rank // groups
    if rg > MAX_RANK_PER_GROUP:
        raise ValueError(f"rank per group {rg} exceeds {MAX_RANK_PER_GROUP}")
    cout = rank if wu is None else wu.shape[0]
    if wu is not None and (tuple(wu.shape) != (cout, rg, 1, 1) or cout % groups):
        raise ValueError(f"wu must be [Cout, R/g, 1, 1] with Cout divisible by groups, got {tuple(wu.shape)}")
    for name, bias, size in (("ba", ba, rank), ("bb", bb, rank), ("bu", bu, cout)):
        if bias is not None and tuple(bias.shape) != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {tuple(bias.shape)}")
    hout = output_extent(height, kernel_h, stride_h, dilation_h, pad_top, pad_bottom)
    wout = output_extent(width, kernel_w, stride_w, dilation_w, pad_left, pad_right)
    if hout < 1 or wout < 1:
        raise ValueError(f"the padded input {height}x{width} is smaller than the receptive field")

    if wu is None and bu is not None:
        raise ValueError("bu needs wu: without U the branch is A(x) * B(x) (AtrousQuadProduct has no output bias)")

    y = torch.empty(batch, cout, hout, wout, dtype=x.dtype, device=x.device)
    if batch == 0:
        return y
    geometry = layer_constants(cin, rank, cout, groups, (kernel_h, kernel_w), (stride_h, stride_w),
                               (dilation_h, dilation_w), (pad_top, pad_left), has_ba=ba is not None,
                               has_bb=bb is not None, has_bu=None if wu is None else bu is not None,
                               block_pixels=block_pixels)
    x, wa, wb = x.contiguous(), wa.contiguous(), wb.contiguous()
    # Absent biases: any valid pointer, never read because its HAS_* flag is off.
    ba_, bb_ = (t.contiguous() if t is not None else wa for t in (ba, bb))
    grid = (program_count(batch, hout, wout, groups, block_pixels),)
    if wu is None:
        atrous_quad_product_kernel[grid](x, wa, ba_, wb, bb_, height, width, hout, wout, y, **geometry)
    else:
        bu_ = bu.contiguous() if bu is not None else wa
        atrous_quad_conv_kernel[grid](x, wa, ba_, wb, bb_, wu.contiguous(), bu_, height, width, hout, wout, y,
                                      **geometry)
    return y
