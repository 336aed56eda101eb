"""FP4 weight formats (MXFP4, NVFP4) and QAT. Only ``formats`` is re-exported here; import ``rl.fp4.qat`` directly."""

from rl.fp4.formats import (
    BLOCK_SIZES,
    FORMATS,
    FP4Format,
    FP4Tensor,
    MXFP4Tensor,
    NVFP4Tensor,
    bytes_ratio_vs_bf16,
    dequantize,
    dequantize_mxfp4,
    dequantize_nvfp4,
    fake_quant,
    fake_quant_mxfp4,
    fake_quant_nvfp4,
    quantize,
    quantize_mxfp4,
    quantize_nvfp4,
)

__all__ = [
    "BLOCK_SIZES",
    "FORMATS",
    "FP4Format",
    "FP4Tensor",
    "MXFP4Tensor",
    "NVFP4Tensor",
    "bytes_ratio_vs_bf16",
    "dequantize",
    "dequantize_mxfp4",
    "dequantize_nvfp4",
    "fake_quant",
    "fake_quant_mxfp4",
    "fake_quant_nvfp4",
    "quantize",
    "quantize_mxfp4",
    "quantize_nvfp4",
]
