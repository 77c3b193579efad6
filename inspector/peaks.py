"""Vendors' datasheet peaks of common GPUs: dense (no sparsity) tensor throughput per precision and
memory bandwidth, the denominators of model FLOPs utilisation (MFU).

Which precision a dtype runs in: float16 and bfloat16 on the tensor cores; float32 on the tensor
cores as TF32 when ``torch.get_float32_matmul_precision()`` is not "highest", else on the plain FP32
units; float64 on the FP64 units. Figures are the vendors' published ones (TFLOP/s, TB/s) for the
variant named; a device that matches no entry gets the measured probe instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peak:
    name: str
    precision: str
    gflops: float
    gbytes_per_s: float


#: (name pattern in torch.cuda.get_device_name(), name) -> {precision: TFLOP/s}, memory TB/s.
#: Longer, more specific patterns first (an "H100 PCIe" before an "H100").
_TABLE: list[tuple[str, str, dict[str, float], float]] = [
    ("H200", "NVIDIA H200 SXM", {"fp64": 67.0, "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 4.8),
    ("H100 PCIe", "NVIDIA H100 PCIe", {"fp64": 51.2, "fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, 2.0),
    ("H100 NVL", "NVIDIA H100 NVL", {"fp64": 60.0, "fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}, 3.9),
    ("H100", "NVIDIA H100 SXM", {"fp64": 67.0, "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 3.35),
    ("A100-SXM4-40GB", "NVIDIA A100 SXM 40GB", {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
                                                 "fp16": 312.0}, 1.555),
    ("A100-PCIE-40GB", "NVIDIA A100 PCIe 40GB", {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
                                                  "fp16": 312.0}, 1.555),
    ("A100 80GB PCIe", "NVIDIA A100 PCIe 80GB", {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
                                                  "fp16": 312.0}, 1.935),
    ("A100", "NVIDIA A100 SXM 80GB", {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2.039),
    ("L40S", "NVIDIA L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}, 0.864),
    ("L4", "NVIDIA L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}, 0.3),
    ("A10", "NVIDIA A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, 0.6),
    ("V100", "NVIDIA V100 SXM2", {"fp64": 7.8, "fp32": 15.7, "fp16": 125.0}, 0.9),
    ("T4", "NVIDIA T4", {"fp32": 8.1, "fp16": 65.0}, 0.32),
]


def precision(dtype: torch.dtype) -> str:
    """The units a matmul in ``dtype`` runs on (see the module docstring)."""
    if dtype == torch.float32:
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dtype, "fp32")


def datasheet_peak(device_name: str, dtype: torch.dtype) -> Peak | None:
    """The datasheet peak of the first entry whose pattern ``device_name`` contains, in the precision
    ``dtype`` runs in; None for a device or precision the table does not know."""
    wanted = precision(dtype)
    for pattern, name, tflops, tbytes in _TABLE:
        if pattern in device_name:
            if wanted not in tflops:
                return None
            return Peak(name, wanted, tflops[wanted] * 1e3, tbytes * 1e3)
    return None
