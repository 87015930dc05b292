"""The kernels a live hop's linear layers could run on: a product of a few rows (a hop's new rows)
by a large weight, timed on this CPU with the bytes each reads per second against the memory
read bandwidth. The candidates: PyTorch float32 (row-major and column-major weights), bfloat16,
int8 with per-row activations (`torch._int_mm`, what `--encoders int8` runs), fbgemm's dynamic
int8 linear, torch's weight-only int8 and int4 kernels, and ONNX Runtime's float32 MatMul and
MatMulNBits at 8 and 4 bits (when onnxruntime is installed). Each kernel cycles through copies
of its weight that together exceed `--cycle-mb` (default 1200 MB, past this CPU's caches: a
hop's weights do not stay in them), so the figures are reads from memory.

    python benchmarks/few_rows_gemm.py                      # 15 rows x 1024 x 24576: 100 MB of float32 weights
    python benchmarks/few_rows_gemm.py --rows 60 --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast.runtime.device import cpu_description  # noqa: E402
from emotalk_fast.runtime.memory_floor import read_bandwidth  # noqa: E402
from emotalk_fast.tools.measure import versions  # noqa: E402


def timed(f, repeats: int) -> float:
    """Median seconds of f() after two warm-up calls."""
    f()
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def torch_kernels(x: torch.Tensor) -> dict:
    """name -> (build(weight [out, in] float32) -> a call of the product, bytes of the weight as read per float32 byte)."""
    xb = x.bfloat16()

    def column_major(w):
        column = w.t().contiguous().t()
        return lambda: torch.nn.functional.linear(x, column)

    def bfloat16(w):
        wb = w.t().contiguous().t().bfloat16()
        return lambda: torch.nn.functional.linear(xb, wb)

    def rounded(w):
        scale = w.abs().amax(1) / 127
        return torch.round(w / scale[:, None]).to(torch.int8), scale

    def int_mm(w):
        q, scale = rounded(w)
        qt = q.t()  # [in, out] column-major

        def call():
            peak = x.abs().amax(1, keepdim=True)
            xq = (x * (127 / peak)).round_().to(torch.int8)
            return torch._int_mm(xq, qt).float().mul_(scale).mul_(peak / 127)
        return call

    def fbgemm(w):
        q, scale = rounded(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = torch.ao.nn.quantized.dynamic.Linear(w.shape[1], w.shape[0], bias_=False, dtype=torch.qint8)
            layer.set_weight_bias(torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long),
                                                             0, torch.qint8), None)
        return lambda: layer(x)

    def int8_weight_only(w):
        q, scale = rounded(w)
        return lambda: torch._weight_int8pack_mm(xb, q, scale.bfloat16())

    def int4_weight_only(w, group=128):
        N, K = w.shape
        g = w.reshape(N, K // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        step = ((hi - lo) / 15).clamp(min=1e-8)
        q4 = torch.round((g - lo) / step).clamp(0, 15).to(torch.int32).reshape(N, K)
        packed = torch._convert_weight_to_int4pack_for_cpu(q4, 1)
        sz = torch.cat([step.reshape(N, -1, 1), (lo + 8 * step).reshape(N, -1, 1)], -1).transpose(0, 1)
        sz = sz.contiguous().bfloat16()
        return lambda: torch._weight_int4pack_mm_for_cpu(xb, packed, group, sz)

    kernels = {"float32, row-major weight": (lambda w: (lambda: torch.nn.functional.linear(x, w)), 1.0),
               "float32, column-major weight": (column_major, 1.0), "bfloat16": (bfloat16, 0.5),
               "int8, per-row activations (torch._int_mm)": (int_mm, 0.25),
               "int8, per-tensor activations (fbgemm dynamic)": (fbgemm, 0.25)}
    if hasattr(torch, "_weight_int8pack_mm"):
        kernels["int8 weight-only, bfloat16 activations"] = (int8_weight_only, 0.25)
    if hasattr(torch, "_convert_weight_to_int4pack_for_cpu"):
        kernels["int4 weight-only (group 128), bfloat16 activations"] = (int4_weight_only, 0.125)
    return kernels


def onnx_kernels(x: np.ndarray, threads: int) -> dict:
    """As torch_kernels, in ONNX Runtime (none where it is not installed)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {}
    R, K = x.shape

    def session(node, initializers, N, extra_domain=False):
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [R, K])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [R, N])], initializers)
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if extra_domain else [])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # one session of many runs at a time
        s = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
        return lambda: s.run(None, {"x": x})

    def matmul(w):
        return session(helper.make_node("MatMul", ["x", "W"], ["y"]),
                       [numpy_helper.from_array(w.t().contiguous().numpy(), "W")], w.shape[0])

    def nbits(bits, block=128):
        def build(w):
            N = w.shape[0]
            g = w.reshape(N, K // block, block)
            mid = 2 ** (bits - 1)
            scale = g.abs().amax(-1, keepdim=True) / (mid - 1)
            q = (torch.round(g / scale) + mid).clamp(0, 2 ** bits - 1).to(torch.uint8)
            if bits == 4:
                q = q[..., 0::2] | (q[..., 1::2] << 4)
            node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N, bits=bits,
                                    block_size=block, accuracy_level=4)
            return session(node, [numpy_helper.from_array(q.numpy(), "B"),
                                  numpy_helper.from_array(scale.reshape(-1).numpy(), "S")], N, True)
        return build

    return {"ONNX Runtime float32 MatMul": (matmul, 1.0),
            "ONNX Runtime MatMulNBits 8-bit (block 128, accuracy level 4)": (nbits(8), 0.25),
            "ONNX Runtime MatMulNBits 4-bit (block 128, accuracy level 4)": (nbits(4), 0.125)}


def cycled(build, weights: list[torch.Tensor]):
    """One kernel per weight copy, called in turn."""
    kernels = [build(w) for w in weights]
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(kernels)
        return kernels[state["i"]]()

    return call


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--in-features", type=int, default=1024)
    p.add_argument("--out-features", type=int, default=24576)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--cycle-mb", type=int, default=1200, help="the weight copies' bytes a kernel cycles through, at least")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.out_features, args.in_features, generator=g) * 0.02
    x = torch.randn(args.rows, args.in_features, generator=g)
    bandwidth = read_bandwidth("cpu")
    kernels = {**torch_kernels(x), **onnx_kernels(x.numpy(), args.threads)}
    v = versions()
    print(f"{args.rows} rows x {args.in_features} x {args.out_features}; CPU {cpu_description()}, {args.threads} "
          f"threads, memory reads {bandwidth / 1e9:.1f} GB/s (all cores); torch {v['torch']}; "
          f"{time.strftime('%Y-%m-%d')}; median of {args.repeats}, each kernel cycling through {args.cycle_mb} MB or "
          "more of weight copies\n")
    print("| kernel | weight bytes | time | bytes read per second | of the bandwidth |")
    print("| --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        for name, (build, per_byte) in kernels.items():
            nbytes = int(w.numel() * 4 * per_byte)
            copies = max(1, -(-args.cycle_mb * 1_000_000 // nbytes))
            f = cycled(build, [w.clone() for _ in range(copies)])
            sec = timed(f, max(args.repeats, 2 * copies))
            del f
            print(f"| {name} | {nbytes / 1e6:.0f} MB | {1000 * sec:.2f} ms | {nbytes / sec / 1e9:.1f} GB/s | "
                  f"{nbytes / sec / bandwidth:.0%} |", flush=True)

if __name__ == "__main__":
    main()
