// Fused quadratic branch y = U(A(x) * B(x)): one kernel, the input read once per tile.
//
// A thread block owns (image n, group g, a tile of output pixels). It walks the group's input
// channels in chunks; for each chunk it stages in shared memory
//   * the input patch that the tile's receptive fields cover (tile + dilated halo, zero-filled
//     outside the image, i.e. the padding is never materialised), and
//   * the matching A and B weight slices, laid out [channel][tap][A ranks | B ranks],
// then every thread accumulates A_j and B_j (all ranks j of the group, float32, in registers)
// for its PIX output pixels. Each staged input value feeds both A and B and every rank, so x
// is read from device memory once per tile instead of once per factor conv as in the
// decomposed PyTorch graph, and A(x), B(x) and A*B never leave registers. Finally U (a grouped
// 1x1 projection, staged in shared memory in chunks of output channels) turns the rank
// products into the group's Cout/g outputs, written with coalesced stores.
#include "atrous_quad.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

namespace {

constexpr int kMaxThreads = 256;
// Dynamic shared memory per block, kept under the 48 KiB that needs no opt-in so that
// several blocks share an SM (their loads then overlap each other's arithmetic).
constexpr int kSmemBytes = 48 * 1024;
constexpr int kSmemFloats = kSmemBytes / static_cast<int>(sizeof(float));

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float toFloat<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }

// Unsigned division by a run-time constant as a multiply-high and a shift (Granlund and
// Montgomery); exact for numerators below 2^31. Staging decomposes every element's index, and
// a hardware division there would cost more than the load it addresses.
struct FastDiv {
    uint32_t divisor, mul, shift;
    __device__ __forceinline__ uint32_t operator()(uint32_t n) const { return (__umulhi(n, mul) + n) >> shift; }
};

// Everything the kernel needs besides the pointers; derived once on the host.
struct KernelArgs {
    int in_channels, height, width;  // input image (all groups)
    int cin_g, rg, cout_g, groups;   // per-group channel counts
    int hout, wout;
    int kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
    int tiles_w, tiles;     // output tiles per (image, group): tiles_w across, tiles in all
    int chunk;              // input channels whose patch is staged per pass
    int wchunk;             // input channels whose A/B weights are staged at once (a multiple
                            // of chunk, or cin_g): usually all of them, once per block
    int patch_h, patch_w;   // staged input patch of one channel
    int pitch;              // shared-memory row pitch of the patch (>= patch_w, bank-conflict padding)
    FastDiv div_patch_w, div_patch_h;
    int u_chunk;            // output channels of U staged per pass
};

struct Pointers {
    const void *x, *wa, *ba, *wb, *bb, *wu, *bu;
    void* y;
};

// Vector width of the broadcast weight reads from shared memory (16-byte loads when possible).
template <int RG>
constexpr int kVec = RG % 4 == 0 ? 4 : (RG % 2 == 0 ? 2 : 1);

template <int V>
__device__ __forceinline__ void loadVec(const float* p, float (&out)[V]) {
    if constexpr (V == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    } else if constexpr (V == 2) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        out[0] = v.x; out[1] = v.y;
    } else {
        out[0] = *p;
    }
}

// acc_a[p][j] += wa[j] * v[p], acc_b[p][j] += wb[j] * v[p] for one tap; `w` points at the tap's
// [A ranks | B ranks] slice. Each weight is read once per thread and reused for PIX pixels.
template <int RG, int PIX>
__device__ __forceinline__ void accumulateTap(const float* w, const float (&v)[PIX],
                                              float (&acc_a)[PIX][RG], float (&acc_b)[PIX][RG]) {
    constexpr int V = kVec<RG>;
#pragma unroll
    for (int j0 = 0; j0 < RG; j0 += V) {
        float wa[V], wb[V];
        loadVec<V>(w + j0, wa);
        loadVec<V>(w + RG + j0, wb);
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
            for (int p = 0; p < PIX; ++p) {
                acc_a[p][j0 + j] = fmaf(wa[j], v[p], acc_a[p][j0 + j]);
                acc_b[p][j0 + j] = fmaf(wb[j], v[p], acc_b[p][j0 + j]);
            }
        }
    }
}

// Global loads each thread issues before storing any of them to shared memory: staging is
// latency-bound, so each thread keeps this many loads in flight instead of one.
constexpr int kLoadBatch = 8;

// Staging walks a chunk's input patch as a flat index over [channel][patch row][patch column]
// (consecutive threads read consecutive addresses of an input row); each thread takes the
// elements i0, i0 + nthreads, ... of a batch. The batch holds only the loaded values: the
// shared-memory offsets are recomputed at store time, which is cheaper than registers.
template <typename T>
__device__ __forceinline__ void loadPatchBatch(const KernelArgs& a, const T* __restrict__ x_chunk, int64_t plane,
                                               int count, int ih0, int iw0, int i0, int nthreads,
                                               float (&v)[kLoadBatch]) {
#pragma unroll
    for (int k = 0; k < kLoadBatch; ++k) {
        const int i = i0 + k * nthreads;
        const int row = static_cast<int>(a.div_patch_w(i));  // channel * patch_h + patch row
        const int ci = static_cast<int>(a.div_patch_h(row));
        const int ih = ih0 + row - ci * a.patch_h;
        const int iw = iw0 + i - row * a.patch_w;
        v[k] = i < count && ih >= 0 && ih < a.height && iw >= 0 && iw < a.width
                   ? toFloat(x_chunk[ci * plane + static_cast<int64_t>(ih) * a.width + iw])
                   : 0.f;  // zero padding, never materialised in device memory
    }
}

__device__ __forceinline__ void storePatchBatch(const KernelArgs& a, float* x_s, int count, int i0, int nthreads,
                                                const float (&v)[kLoadBatch]) {
#pragma unroll
    for (int k = 0; k < kLoadBatch; ++k) {
        const int i = i0 + k * nthreads;
        const int row = static_cast<int>(a.div_patch_w(i));
        if (i < count) x_s[row * a.pitch + i - row * a.patch_w] = v[k];
    }
}

// Stages the A and B weights of input channels [c_begin, c_begin + wc) of the group as
// [channel][tap][A ranks | B ranks], zero for ranks >= rg so that the FMA loop needs no guard.
// Walking the shared layout, (channel, tap) is one offset into each rank's global row.
template <typename T, int RG>
__device__ __forceinline__ void stageWeights(const KernelArgs& a, float* w_s, const T* __restrict__ wa,
                                             const T* __restrict__ wb, int group, int c_begin, int wc,
                                             int tid, int nthreads) {
    const int taps = a.kernel_h * a.kernel_w;
    const int count = wc * taps * 2 * RG;
    for (int i0 = tid; i0 < count; i0 += kLoadBatch * nthreads) {
        float v[kLoadBatch];
#pragma unroll
        for (int k = 0; k < kLoadBatch; ++k) {
            const int i = i0 + k * nthreads;
            const int j = i % RG;
            const T* const src = (i / RG) % 2 ? wb : wa;
            const int64_t row = static_cast<int64_t>(group * a.rg + j) * a.cin_g + c_begin;
            v[k] = i < count && j < a.rg ? toFloat(src[row * taps + i / (2 * RG)]) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < kLoadBatch; ++k) {
            if (i0 + k * nthreads < count) w_s[i0 + k * nthreads] = v[k];
        }
    }
}

// Blocks per SM each instantiation is compiled for: ptxas then caps registers at
// 64K / (256 * blocks). The estimate (2 * RG * PIX accumulators + 60 for addresses, loop state
// and staged values) keeps the big-rank kernels free of spills and lets the small-rank,
// memory-bound ones (depthwise) keep 3-4 blocks per SM resident to hide load latency.
template <int RG, int PIX>
constexpr int kMinBlocksPerSm = 65536 / (kMaxThreads * (2 * RG * PIX + 60)) > 0
                                    ? 65536 / (kMaxThreads * (2 * RG * PIX + 60))
                                    : 1;

// RG: rank per group rounded up to a compiled size; ranks rg..RG-1 carry zero weights, so the
// unrolled loops need no guard. PIX: output pixels per thread, strided by blockDim.x along a
// row so that stores stay coalesced and shared-memory reads conflict-free.
template <typename T, int RG, int PIX>
__global__ void __launch_bounds__(kMaxThreads, (kMinBlocksPerSm<RG, PIX>))
atrousQuadKernel(const __grid_constant__ KernelArgs a, const T* __restrict__ x, const T* __restrict__ wa,
                 const T* __restrict__ ba, const T* __restrict__ wb, const T* __restrict__ bb,
                 const T* __restrict__ wu, const T* __restrict__ bu, T* __restrict__ y) {
    extern __shared__ float4 smem_raw[];  // float4: 16-byte alignment for the vector reads
    float* const smem = reinterpret_cast<float*>(smem_raw);
    const int taps = a.kernel_h * a.kernel_w;
    float* const w_s = smem;                              // [wchunk][taps][2][RG]
    float* const x_s = smem + a.wchunk * taps * 2 * RG;   // [chunk][patch_h][pitch]

    const int tile = blockIdx.x % a.tiles;
    const int image_group = blockIdx.x / a.tiles;
    const int group = image_group % a.groups;
    const int n = image_group / a.groups;
    const int oh0 = (tile / a.tiles_w) * blockDim.y;
    const int ow0 = (tile % a.tiles_w) * blockDim.x * PIX;
    const int ih0 = oh0 * a.stride_h - a.pad_top;
    const int iw0 = ow0 * a.stride_w - a.pad_left;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nthreads = blockDim.x * blockDim.y;
    const int64_t plane = static_cast<int64_t>(a.height) * a.width;
    const T* const x_ng = x + (static_cast<int64_t>(n) * a.in_channels + group * a.cin_g) * plane;

    // Patch staging is software-pipelined: the first kLoadBatch elements per thread of chunk
    // k + 1 are loaded into registers before chunk k is computed, so their latency hides behind
    // the FMAs. The launcher sizes chunks so that this first batch usually covers them.
    const int patch_size = a.patch_h * a.patch_w;
    float staged[kLoadBatch];
    loadPatchBatch(a, x_ng, plane, min(a.chunk, a.cin_g) * patch_size, ih0, iw0, tid, nthreads, staged);

    float acc_a[PIX][RG], acc_b[PIX][RG];
#pragma unroll
    for (int j = 0; j < RG; ++j) {
        const bool live = j < a.rg;
        const float bias_a = live && ba ? toFloat(ba[group * a.rg + j]) : 0.f;
        const float bias_b = live && bb ? toFloat(bb[group * a.rg + j]) : 0.f;
#pragma unroll
        for (int p = 0; p < PIX; ++p) {
            acc_a[p][j] = bias_a;
            acc_b[p][j] = bias_b;
        }
    }

    for (int c0 = 0; c0 < a.cin_g; c0 += a.chunk) {
        const int cc = min(a.chunk, a.cin_g - c0);
        const int count = cc * patch_size;
        __syncthreads();  // the previous pass has finished reading shared memory
        if (c0 % a.wchunk == 0) stageWeights<T, RG>(a, w_s, wa, wb, group, c0, min(a.wchunk, a.cin_g - c0), tid, nthreads);
        storePatchBatch(a, x_s, count, tid, nthreads, staged);
        // Patches larger than one batch per thread: the rest, unpipelined.
        for (int i0 = tid + kLoadBatch * nthreads; i0 < count; i0 += kLoadBatch * nthreads) {
            loadPatchBatch(a, x_ng + c0 * plane, plane, count, ih0, iw0, i0, nthreads, staged);
            storePatchBatch(a, x_s, count, i0, nthreads, staged);
        }
        __syncthreads();

        if (c0 + cc < a.cin_g) {
            loadPatchBatch(a, x_ng + (c0 + cc) * plane, plane, min(a.chunk, a.cin_g - c0 - cc) * patch_size, ih0, iw0,
                           tid, nthreads, staged);
        }

        for (int ci = 0; ci < cc; ++ci) {
            const float* const xc = x_s + (ci * a.patch_h + threadIdx.y * a.stride_h) * a.pitch
                                    + threadIdx.x * a.stride_w;
            const float* const wc = w_s + (c0 % a.wchunk + ci) * taps * 2 * RG;
            const int pix_step = blockDim.x * a.stride_w;
            for (int kh = 0; kh < a.kernel_h; ++kh) {
                for (int kw = 0; kw < a.kernel_w; ++kw) {
                    const float* const xp = xc + kh * a.dilation_h * a.pitch + kw * a.dilation_w;
                    float v[PIX];
#pragma unroll
                    for (int p = 0; p < PIX; ++p) v[p] = xp[p * pix_step];
                    accumulateTap<RG, PIX>(wc + (kh * a.kernel_w + kw) * 2 * RG, v, acc_a, acc_b);
                }
            }
        }
    }

    // acc_a becomes the rank products A_j * B_j.
#pragma unroll
    for (int p = 0; p < PIX; ++p) {
#pragma unroll
        for (int j = 0; j < RG; ++j) acc_a[p][j] *= acc_b[p][j];
    }

    const int oh = oh0 + threadIdx.y;
    bool store[PIX];
    int64_t offset[PIX];
#pragma unroll
    for (int p = 0; p < PIX; ++p) {
        const int ow = ow0 + threadIdx.x + p * blockDim.x;
        store[p] = oh < a.hout && ow < a.wout;
        offset[p] = static_cast<int64_t>(oh) * a.wout + ow;
    }
    const int64_t out_plane = static_cast<int64_t>(a.hout) * a.wout;
    T* const y_ng = y + (static_cast<int64_t>(n) * a.groups + group) * a.cout_g * out_plane;

    if (wu == nullptr) {  // U = identity: output channel j of the group is rank product j
#pragma unroll
        for (int j = 0; j < RG; ++j) {
            if (j >= a.rg) break;
            const float bias = bu ? toFloat(bu[group * a.rg + j]) : 0.f;
#pragma unroll
            for (int p = 0; p < PIX; ++p) {
                if (store[p]) y_ng[j * out_plane + offset[p]] = fromFloat<T>(acc_a[p][j] + bias);
            }
        }
        return;
    }

    float* const u_s = smem;  // [u_chunk][RG], zero beyond rg like the A/B weights
    for (int co0 = 0; co0 < a.cout_g; co0 += a.u_chunk) {
        const int uc = min(a.u_chunk, a.cout_g - co0);
        __syncthreads();  // nobody still reads the patch or the previous U chunk
        for (int i = tid; i < uc * RG; i += nthreads) {
            const int j = i % RG;
            const int co = i / RG;
            u_s[i] = j < a.rg ? toFloat(wu[static_cast<int64_t>(group * a.cout_g + co0 + co) * a.rg + j]) : 0.f;
        }
        __syncthreads();
        for (int co = 0; co < uc; ++co) {
            const float bias = bu ? toFloat(bu[group * a.cout_g + co0 + co]) : 0.f;
            float out[PIX];
#pragma unroll
            for (int p = 0; p < PIX; ++p) out[p] = bias;
            constexpr int V = kVec<RG>;
#pragma unroll
            for (int j0 = 0; j0 < RG; j0 += V) {
                float u[V];
                loadVec<V>(u_s + co * RG + j0, u);
#pragma unroll
                for (int j = 0; j < V; ++j) {
#pragma unroll
                    for (int p = 0; p < PIX; ++p) out[p] = fmaf(u[j], acc_a[p][j0 + j], out[p]);
                }
            }
            T* const y_c = y_ng + (co0 + co) * out_plane;
#pragma unroll
            for (int p = 0; p < PIX; ++p) {
                if (store[p]) y_c[offset[p]] = fromFloat<T>(out[p]);
            }
        }
    }
}

// Pixels per thread the register budget allows for a rank bucket: 2 * RG * PIX accumulators.
constexpr int maxPixelsPerThread(int rg) { return rg <= 8 ? 4 : (rg <= 32 ? 2 : 1); }

int divUp(int a, int b) { return (a + b - 1) / b; }

FastDiv fastDiv(uint32_t divisor) {
    uint32_t shift = 0;
    while ((1ull << shift) < divisor) ++shift;
    const uint64_t mul = ((1ull << 32) * ((1ull << shift) - divisor)) / divisor + 1;
    return {divisor, static_cast<uint32_t>(mul), shift};
}

struct Launch {
    int bx, by, pix;
};

// Block shape and pixels per thread. Wide tiles (PIX > 1) reuse each staged weight across PIX
// FMAs and shrink the halo's share of the patch, but only pay off while the row tile wastes
// little (<= 25% past the image edge) and the grid still has 8 warps per SM (each thread then
// has 2 * RG * PIX independent FMA chains, so few warps keep the FMA units busy).
Launch chooseLaunch(int hout, int wout, int pix_max, int64_t images, int sm_count) {
    Launch l{8, 1, pix_max};
    for (;; l.pix /= 2) {
        l.bx = 8;  // a warp spans at most 4 rows of a tile
        while (l.bx < 32 && l.bx * l.pix < wout) l.bx *= 2;
        const int tile_w = l.bx * l.pix;
        const bool tight = static_cast<int64_t>(divUp(wout, tile_w)) * tile_w * 4 <= static_cast<int64_t>(wout) * 5;
        const bool fills = images * hout * divUp(wout, l.pix) >= static_cast<int64_t>(sm_count) * 256;
        if (l.pix == 1 || (tight && fills)) break;
    }
    l.by = 1;
    while (l.by * 2 * l.bx <= kMaxThreads && l.by < hout) l.by *= 2;
    // Small problems: shorter tiles for more blocks (at least two per SM), down to two warps.
    while (l.by * l.bx > 64 && images * divUp(hout, l.by) * divUp(wout, l.bx * l.pix) < 2LL * sm_count) {
        l.by /= 2;
    }
    return l;
}

// Smallest row pitch >= width that puts the next thread row of a warp on the banks just after
// this row's (rows are stride_h patch rows apart), so a warp's patch reads hit distinct banks.
int conflictFreePitch(int width, int bx, int stride_h, int stride_w) {
    if (bx >= 32) return width;  // a warp reads a single row
    for (int pitch = width; pitch < width + 32; ++pitch) {
        if ((pitch * stride_h - bx * stride_w) % 32 == 0) return pitch;
    }
    return width;
}

template <typename T, int RG, int PIX>
int launchKernel(KernelArgs args, dim3 block, int batch, const Pointers& ptr, cudaStream_t stream) {
    const size_t smem_bytes = static_cast<size_t>(args.wchunk * args.kernel_h * args.kernel_w * 2 * RG +
                                                  args.chunk * args.patch_h * args.pitch) * sizeof(float);
    // The grid is 1-D (tiles fastest, so neighbouring tiles share their halo in L2); batches
    // whose block count passes the grid limit are split into several launches.
    const int64_t blocks_per_image = static_cast<int64_t>(args.tiles) * args.groups;
    if (blocks_per_image > INT_MAX) return ATROUS_QUAD_INVALID_ARGUMENT;
    const int images_per_launch = static_cast<int>(INT_MAX / blocks_per_image);
    const int64_t x_image = static_cast<int64_t>(args.in_channels) * args.height * args.width;
    const int64_t y_image = static_cast<int64_t>(args.cout_g) * args.groups * args.hout * args.wout;
    for (int n0 = 0; n0 < batch; n0 += images_per_launch) {
        const int images = batch - n0 < images_per_launch ? batch - n0 : images_per_launch;
        const dim3 grid(static_cast<unsigned>(blocks_per_image * images));
        atrousQuadKernel<T, RG, PIX><<<grid, block, smem_bytes, stream>>>(
            args, static_cast<const T*>(ptr.x) + n0 * x_image, static_cast<const T*>(ptr.wa),
            static_cast<const T*>(ptr.ba), static_cast<const T*>(ptr.wb), static_cast<const T*>(ptr.bb),
            static_cast<const T*>(ptr.wu), static_cast<const T*>(ptr.bu),
            static_cast<T*>(ptr.y) + n0 * y_image);
        if (cudaGetLastError() != cudaSuccess) return ATROUS_QUAD_CUDA_ERROR;
    }
    return ATROUS_QUAD_SUCCESS;
}

template <typename T, int RG>
int launchRank(const AtrousQuadParams& p, int hout, int wout, const Pointers& ptr, cudaStream_t stream) {
    int device = 0, sm_count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        return ATROUS_QUAD_CUDA_ERROR;
    }
    const int64_t images = static_cast<int64_t>(p.batch) * p.groups;
    Launch l = chooseLaunch(hout, wout, maxPixelsPerThread(RG), images, sm_count);

    KernelArgs a{};
    a.in_channels = p.in_channels;
    a.height = p.in_height;
    a.width = p.in_width;
    a.cin_g = p.in_channels / p.groups;
    a.rg = p.rank / p.groups;
    a.cout_g = p.out_channels / p.groups;
    a.groups = p.groups;
    a.hout = hout;
    a.wout = wout;
    a.kernel_h = p.kernel_h;
    a.kernel_w = p.kernel_w;
    a.stride_h = p.stride_h;
    a.stride_w = p.stride_w;
    a.dilation_h = p.dilation_h;
    a.dilation_w = p.dilation_w;
    a.pad_top = p.pad_top;
    a.pad_left = p.pad_left;

    // One channel's weights and patch must fit; very large kernels/dilations get smaller
    // tiles: shorter first, then narrower.
    const int64_t taps = static_cast<int64_t>(p.kernel_h) * p.kernel_w;
    int64_t per_channel = 0;
    for (;;) {
        // int64: dilation * (kernel - 1) may be close to the int range.
        const int64_t patch_h = (l.by - 1) * static_cast<int64_t>(p.stride_h) +
                                (p.kernel_h - 1) * static_cast<int64_t>(p.dilation_h) + 1;
        const int64_t patch_w = (l.bx * l.pix - 1) * static_cast<int64_t>(p.stride_w) +
                                (p.kernel_w - 1) * static_cast<int64_t>(p.dilation_w) + 1;
        const int pitch = patch_w <= kSmemFloats
                              ? conflictFreePitch(static_cast<int>(patch_w), l.bx, p.stride_h, p.stride_w)
                              : kSmemFloats + 1;
        per_channel = taps * 2 * RG + patch_h * pitch;
        if (per_channel <= kSmemFloats) {
            a.patch_h = static_cast<int>(patch_h);
            a.patch_w = static_cast<int>(patch_w);
            a.pitch = pitch;
            break;
        }
        if (l.by > 1) {
            l.by /= 2;
        } else if (l.pix > 1) {
            l.pix /= 2;
        } else if (l.bx > 1) {
            l.bx /= 2;
        } else {
            return ATROUS_QUAD_TILE_TOO_LARGE;
        }
    }
    // Patch chunk: the channels one load batch per thread covers (what the pipeline prefetches).
    // The rest of shared memory holds weights: every channel's when they fit, so that they are
    // staged once per block rather than once per chunk.
    const int64_t weights_per_channel = taps * 2 * RG;
    const int64_t patch_per_channel = static_cast<int64_t>(a.patch_h) * a.pitch;
    int64_t chunk = kLoadBatch * l.bx * l.by / (static_cast<int64_t>(a.patch_h) * a.patch_w);
    chunk = std::max<int64_t>(1, std::min<int64_t>({chunk, a.cin_g, kSmemFloats / per_channel}));
    int64_t wchunk = std::min<int64_t>(a.cin_g, (kSmemFloats - chunk * patch_per_channel) / weights_per_channel);
    if (wchunk < a.cin_g) wchunk -= wchunk % chunk;
    a.chunk = static_cast<int>(chunk);
    a.wchunk = static_cast<int>(wchunk);
    // U reuses the staging buffer once the channel loop is done.
    const int64_t smem_floats = wchunk * weights_per_channel + chunk * patch_per_channel;
    a.u_chunk = static_cast<int>(std::min<int64_t>(a.cout_g, smem_floats / RG));
    a.div_patch_w = fastDiv(a.patch_w);
    a.div_patch_h = fastDiv(a.patch_h);
    a.tiles_w = divUp(wout, l.bx * l.pix);
    a.tiles = a.tiles_w * divUp(hout, l.by);

    const dim3 block(l.bx, l.by);
    if constexpr (maxPixelsPerThread(RG) >= 4) {
        if (l.pix == 4) return launchKernel<T, RG, 4>(a, block, p.batch, ptr, stream);
    }
    if constexpr (maxPixelsPerThread(RG) >= 2) {
        if (l.pix == 2) return launchKernel<T, RG, 2>(a, block, p.batch, ptr, stream);
    }
    return launchKernel<T, RG, 1>(a, block, p.batch, ptr, stream);
}

template <typename T>
int launchTyped(const AtrousQuadParams& p, int hout, int wout, const Pointers& ptr, cudaStream_t stream) {
    // Compiled rank buckets: powers of two up to the cap (a rank is padded to the next one).
    const int rg = p.rank / p.groups;
    if (rg <= 1) return launchRank<T, 1>(p, hout, wout, ptr, stream);
    if (rg <= 2) return launchRank<T, 2>(p, hout, wout, ptr, stream);
    if (rg <= 4) return launchRank<T, 4>(p, hout, wout, ptr, stream);
    if (rg <= 8) return launchRank<T, 8>(p, hout, wout, ptr, stream);
    if (rg <= 16) return launchRank<T, 16>(p, hout, wout, ptr, stream);
    if (rg <= 32) return launchRank<T, 32>(p, hout, wout, ptr, stream);
    return launchRank<T, 64>(p, hout, wout, ptr, stream);
}

}  // namespace

extern "C" int atrousQuadForward(const AtrousQuadParams* params, const void* x, const void* wa,
                                 const void* ba, const void* wb, const void* bb, const void* wu,
                                 const void* bu, void* y, cudaStream_t stream) {
    if (params == nullptr) return ATROUS_QUAD_INVALID_ARGUMENT;
    const AtrousQuadParams& p = *params;
    const bool positive = p.batch >= 0 && p.in_channels > 0 && p.in_height > 0 && p.in_width > 0 &&
                          p.rank > 0 && p.out_channels > 0 && p.groups > 0 && p.kernel_h > 0 &&
                          p.kernel_w > 0 && p.stride_h > 0 && p.stride_w > 0 && p.dilation_h > 0 &&
                          p.dilation_w > 0;
    const bool pads = p.pad_top >= 0 && p.pad_left >= 0 && p.pad_bottom >= 0 && p.pad_right >= 0;
    if (!positive || !pads || (p.dtype != ATROUS_QUAD_FLOAT32 && p.dtype != ATROUS_QUAD_FLOAT16)) {
        return ATROUS_QUAD_INVALID_ARGUMENT;
    }
    if (p.in_channels % p.groups || p.rank % p.groups || p.out_channels % p.groups) {
        return ATROUS_QUAD_INVALID_ARGUMENT;
    }
    if (wu == nullptr && p.out_channels != p.rank) return ATROUS_QUAD_INVALID_ARGUMENT;
    if (x == nullptr || wa == nullptr || wb == nullptr || y == nullptr) return ATROUS_QUAD_INVALID_ARGUMENT;
    if (p.rank / p.groups > ATROUS_QUAD_MAX_RANK_PER_GROUP) return ATROUS_QUAD_RANK_TOO_LARGE;
    const int hout = atrousQuadOutputExtent(p.in_height, p.kernel_h, p.stride_h, p.dilation_h, p.pad_top, p.pad_bottom);
    const int wout = atrousQuadOutputExtent(p.in_width, p.kernel_w, p.stride_w, p.dilation_w, p.pad_left, p.pad_right);
    if (hout < 1 || wout < 1) return ATROUS_QUAD_INVALID_ARGUMENT;
    if (p.batch == 0) return ATROUS_QUAD_SUCCESS;

    const Pointers ptr{x, wa, ba, wb, bb, wu, bu, y};
    return p.dtype == ATROUS_QUAD_FLOAT32 ? launchTyped<float>(p, hout, wout, ptr, stream)
                                          : launchTyped<__half>(p, hout, wout, ptr, stream);
}

extern "C" const char* atrousQuadStatusString(int status) {
    switch (status) {
        case ATROUS_QUAD_SUCCESS: return "success";
        case ATROUS_QUAD_INVALID_ARGUMENT: return "invalid argument";
        case ATROUS_QUAD_RANK_TOO_LARGE: return "rank per group exceeds ATROUS_QUAD_MAX_RANK_PER_GROUP";
        case ATROUS_QUAD_TILE_TOO_LARGE: return "one input channel's patch does not fit in shared memory";
        case ATROUS_QUAD_CUDA_ERROR: return "CUDA error";
        default: return "unknown status";
    }
}
