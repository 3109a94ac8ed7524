"""Tensor data types as the Open Inference Protocol and Triton's model config name them.

One table serves both spellings: the protocol says `FP32`, config.pbtxt says `TYPE_FP32`.
BYTES (length-prefixed strings) and BF16 (no numpy type) are left out on purpose: qdeploy
engines take numeric tensors only, so such requests are refused with a clear 400.
"""

from __future__ import annotations

import numpy as np

from qdeploy.errors import QDeployError

_BY_NAME: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dtype: name for name, dtype in _BY_NAME.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a protocol datatype name (binary tensors are LE)."""
    if datatype not in _BY_NAME:
        raise QDeployError(f"datatype {datatype!r} is not supported; use one of {', '.join(_BY_NAME)}")
    return _BY_NAME[datatype].newbyteorder("<")


def protocol_datatype(dtype: np.dtype) -> str:
    """`FP32` for float32, and so on."""
    if np.dtype(dtype) not in _BY_DTYPE:
        raise QDeployError(f"tensors of dtype {dtype} cannot be served; export the model with a numeric type")
    return _BY_DTYPE[np.dtype(dtype)]


def config_datatype(dtype: np.dtype) -> str:
    """`TYPE_FP32` for float32: the enum name config.pbtxt uses."""
    return "TYPE_" + protocol_datatype(dtype)


def dtype_from_config(name: str) -> np.dtype:
    """Inverse of config_datatype."""
    return numpy_dtype(name.removeprefix("TYPE_")).newbyteorder("=")
