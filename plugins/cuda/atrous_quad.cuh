/*
 * Fused forward of one quadratic branch:  y = U(A(x) * B(x))  (see README.md beside this file).
 *
 *   A_j = ba[j] + sum_{ci in group(j), kh, kw} wa[j, ci, kh, kw] * x[n, ci, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]
 *   B_j likewise with wb, bb;  y[n, co] = bu[co] + sum_{j in group(co)} wu[co, j] * A_j * B_j.
 *
 * Plain C interface (no TensorRT, no torch) so that a TensorRT plugin, a test harness loaded
 * through ctypes, or any other host code can call it. All tensors are dense, contiguous, on the
 * device, and share one element type (float32, or float16 with float32 accumulation):
 *   x  [N, Cin, H, W]         wa, wb [R, Cin/g, kH, kW]      ba, bb [R]     (optional: NULL)
 *   wu [Cout, R/g, 1, 1]      (optional: NULL means U = identity; then Cout must equal R)
 *   bu [Cout]                 (optional)                     y [N, Cout, Hout, Wout]
 */
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The A and B accumulators of one output pixel live in registers, so the rank per group
 * (R / groups) is capped; larger ranks are refused with ATROUS_QUAD_RANK_TOO_LARGE. */
#define ATROUS_QUAD_MAX_RANK_PER_GROUP 64

typedef enum AtrousQuadDataType {
    ATROUS_QUAD_FLOAT32 = 0,
    ATROUS_QUAD_FLOAT16 = 1,
} AtrousQuadDataType;

typedef enum AtrousQuadStatus {
    ATROUS_QUAD_SUCCESS = 0,
    ATROUS_QUAD_INVALID_ARGUMENT = 1, /* a size, pointer or attribute is out of range */
    ATROUS_QUAD_RANK_TOO_LARGE = 2,   /* R / groups > ATROUS_QUAD_MAX_RANK_PER_GROUP */
    ATROUS_QUAD_TILE_TOO_LARGE = 3,   /* one channel's input patch does not fit shared memory */
    ATROUS_QUAD_CUDA_ERROR = 4,       /* a CUDA runtime call or the launch failed */
} AtrousQuadStatus;

/* Sizes and attributes of one call; fixed-width fields so that other languages (ctypes) can
 * mirror the layout exactly. Pads follow ONNX order: top, left, bottom, right. */
typedef struct AtrousQuadParams {
    int32_t dtype; /* an AtrousQuadDataType */
    int32_t batch, in_channels, in_height, in_width;
    int32_t rank, out_channels, groups;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
} AtrousQuadParams;

/* Output extent along one axis (Hout or Wout); < 1 when the padded input is smaller than the
 * receptive field. Inline so that callers computing output shapes need not link the kernel. */
static inline int32_t atrousQuadOutputExtent(int32_t in, int32_t kernel, int32_t stride,
                                             int32_t dilation, int32_t pad_lo, int32_t pad_hi) {
    const int64_t span = (int64_t)dilation * (kernel - 1) + 1;
    const int64_t padded = (int64_t)in + pad_lo + pad_hi;
    return padded < span ? 0 : (int32_t)((padded - span) / stride + 1);
}

/* Enqueue the fused branch on `stream`; returns an AtrousQuadStatus. Asynchronous: errors that
 * happen while the kernel runs surface at the stream's next synchronisation, as with any
 * launch. Optional tensors are NULL. */
int atrousQuadForward(const AtrousQuadParams* params, const void* x, const void* wa, const void* ba,
                      const void* wb, const void* bb, const void* wu, const void* bu, void* y,
                      cudaStream_t stream);

/* A static, human-readable name for a status code. */
const char* atrousQuadStatusString(int status);

#ifdef __cplusplus
}
#endif
