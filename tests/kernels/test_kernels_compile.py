"""Second tier: compile every kernel for sm_80 and sm_90 without a GPU and check ptxas
reports no register spills at the real shapes (head_dim 208 -> 256, width 832 -> 1024, fp16).

The interpreter tier sets TRITON_INTERPRET=1, which turns @triton.jit into an interpreted
function that cannot be compiled, so the compiling happens in a subprocess (this file run as
a script) with TRITON_INTERPRET unset, a fresh Triton cache (a cached kernel skips ptxas and
its log) and TRITON_DUMP_PTXAS_LOG=1. Skips cleanly when the CUDA backend or ptxas is absent.
"""
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pytest

ARCHS = [80, 90]
# max dynamic shared memory per block, bytes
SHARED_LIMIT = {80: 166912, 90: 232448}


def _contiguous_strides(*shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


def _cases():
    """name -> (kernel, example runtime args, constexprs, options) at the real shapes: fp16,
    head_dim 208, width 832, contiguous tensors, an awkward length and offset. Block sizes come
    from the launchers' own config functions, so this tracks them."""
    import torch
    from emotalk_fast.kernels import add_layer_norm as aln
    from emotalk_fast.kernels import linear_add_layer_norm as laln
    from emotalk_fast.kernels import periodic_alibi_attention as attn
    from emotalk_fast.kernels import periodic_alibi_decode as dec
    from emotalk_fast.kernels import qkv_ppe as qp

    H, T, D, C = 4, 999, 208, 832
    cases = {}
    sq = _contiguous_strides(1, H, T, D)[:3]
    bm, bn, nw, ns = attn.attention_config(256)
    for seq in (False, True):
        args = dict(Q="*fp16", K="*fp16", V="*fp16", Out="*fp16", Slopes="*fp32", SeqLens="*i32",
                    H=H, Tq=T, Tk=T, D=D, offset=7, period=30, qk_scale=0.1)
        args.update(zip([f"stride_{t}{d}" for t in "qkvo" for d in "bht"], sq * 4))
        cases[f"attention_d256_seqlens{int(seq)}"] = (
            attn._periodic_alibi_attention_kernel, args,
            dict(HAS_SEQ_LENS=seq, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=256, PRECISION="tf32"),
            dict(num_warps=nw, num_stages=ns))
    bm, bn, nw, ns = dec.decode_config(256)
    sc = _contiguous_strides(1, H, 3000, D)[:3]
    args = dict(Q="*fp16", K="*fp16", V="*fp16", PartOut="*fp32", PartLse="*fp32", Slopes="*fp32",
                Slots="*i32", Offsets="*i32", H=H, Tq=3, D=D, capacity=3000, period=30, qk_scale=0.1,
                chunk=256, n_chunks=12)
    args.update(zip([f"stride_{t}{d}" for t in "qkv" for d in "bht"], _contiguous_strides(1, H, 3, D)[:3] + sc * 2))
    cases["decode_d256"] = (dec._periodic_alibi_decode_kernel, args,
                            dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=256, PRECISION="tf32"),
                            dict(num_warps=nw, num_stages=ns))
    args = dict(PartOut="*fp32", PartLse="*fp32", Out="*fp16", H=H, D=D, n_chunks=12)
    args.update(zip(["stride_ob", "stride_oh", "stride_ot"], _contiguous_strides(1, H, 3, D)[:3]))
    cases["decode_merge_d256"] = (dec._merge_chunks_kernel, args, dict(BLOCK_M=bm, BLOCK_S=16, BLOCK_D=256),
                                  dict(num_warps=4))
    block_n, nw = aln.add_layer_norm_config(C)
    cases["add_layer_norm_832"] = (
        aln._add_layer_norm_kernel,
        dict(X="*fp16", R="*fp16", W="*fp16", Bias="*fp16", Y="*fp16", stride_x=C, stride_r=C, stride_y=C,
             N=C, eps=1e-5),
        dict(BLOCK_N=block_n), dict(num_warps=nw))
    bm, bn, bk, nw, ns = laln.linear_add_layer_norm_config(C, torch.float16)
    args = {n: "*fp16" for n in ("X", "W", "Bias", "R", "LnW", "LnB", "Y")}
    args.update(stride_xm=2 * C, stride_wn=2 * C, stride_wk=1, stride_rm=C, stride_ym=C, M=T, N=C, K=2 * C, eps=1e-5)
    cases["linear_add_layer_norm_832"] = (
        laln._linear_add_layer_norm_kernel, args,
        dict(HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION="tf32"), dict(num_warps=nw, num_stages=ns))
    for m in (16, 4096):
        bm, bn, bk, nw, ns = qp.qkv_ppe_config(m, torch.float16)
        args = dict(X="*fp16", PE="*fp32", W="*fp16", Bias="*fp16", Out="*fp16",
                    stride_xb=T * C, stride_xt=C, stride_xc=1, stride_pe=C, stride_wn=C, stride_wk=1,
                    stride_ob=T * 3 * C, stride_ot=3 * C, M=T, T=T, N=3 * C, C=C, offset=7, period=30)
        cases[f"qkv_ppe_m{bm}"] = (
            qp._qkv_ppe_kernel, args,
            dict(HAS_PE=True, HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION="tf32"),
            dict(num_warps=nw, num_stages=ns))
    return cases


def _specialize(fn, args, constexprs):
    """Mimic the JIT's specialisation of a real call: pointers and ints divisible by 16 get
    tt.divisibility=16, ints equal to 1 become constexprs, floats are fp32."""
    signature, attrs, constexprs = {}, {}, dict(constexprs)
    missing = set(fn.arg_names) - set(args) - set(constexprs)
    assert not missing, f"{fn.__name__}: no example value for {sorted(missing)}"
    for i, name in enumerate(fn.arg_names):
        value = constexprs.get(name, args.get(name))
        if name in constexprs or (isinstance(value, int) and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, str):
            signature[name] = value
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _compile_all(arch):
    """Worker side: compile each case for `arch`; returns name -> result dict."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = {}
    for name, (fn, args, constexprs, options) in _cases().items():
        signature, constexprs, attrs = _specialize(fn, args, constexprs)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                        target=GPUTarget("cuda", arch, 32), options=options)
        except Exception as e:  # reported per case, so one failure does not hide the rest
            results[name] = dict(error=f"{type(e).__name__}: {e}"[-2000:])
            continue
        text = log.getvalue()
        spills = [int(s) for s in re.findall(r"(\d+) bytes spill (?:stores|loads)", text)]
        regs = [int(r) for r in re.findall(r"Used (\d+) registers", text)]
        results[name] = dict(spill_bytes=sum(spills), registers=max(regs, default=None),
                             shared=kernel.metadata.shared, ptxas_log=bool(regs))
    return results


def _toolchain_problem():
    try:
        from triton.backends.nvidia import compiler as nv
    except Exception as e:  # pragma: no cover - depends on the wheel
        return f"Triton's CUDA backend is unavailable: {e}"
    try:
        ptxas = nv.get_ptxas(80) if nv.get_ptxas.__code__.co_argcount else nv.get_ptxas()
        path = getattr(ptxas, "path", ptxas[0] if isinstance(ptxas, tuple) else ptxas)
        subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
    except Exception as e:
        return f"ptxas is unavailable: {e}"
    return None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    problem = _toolchain_problem()
    if problem:
        pytest.skip(problem)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    # the worker must import the same emotalk_fast as this process (installed or on a path)
    spec = importlib.util.find_spec("emotalk_fast")
    root = os.path.dirname(os.path.dirname(spec.origin))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    from helpers import die_with_this_process  # (this file also runs as a script, without helpers)

    procs = {arch: subprocess.Popen([sys.executable, __file__, str(arch)], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_this_process)
             for arch in ARCHS}
    results = {}
    for arch, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"compile worker for sm_{arch} crashed:\n{err[-3000:]}")
        results[arch] = json.loads(out.strip().splitlines()[-1])
        assert sorted(results[arch]) == sorted(CASE_NAMES), "CASE_NAMES is out of date with _cases()"
    return results


CASE_NAMES = ["attention_d256_seqlens0", "attention_d256_seqlens1", "decode_d256", "decode_merge_d256",
              "add_layer_norm_832", "linear_add_layer_norm_832", "qkv_ppe_m16", "qkv_ppe_m64"]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("case", CASE_NAMES)
def test_compiles_without_spills(compiled, arch, case):
    res = compiled[arch][case]
    assert "error" not in res, f"{case} failed to compile for sm_{arch}: {res.get('error')}"
    assert res["ptxas_log"], "no ptxas -v log captured; cannot check spills"
    assert res["spill_bytes"] == 0, f"{case} sm_{arch}: {res['spill_bytes']} bytes spilled ({res['registers']} regs)"
    assert res["shared"] <= SHARED_LIMIT[arch], f"{case} sm_{arch}: {res['shared']} B shared memory"
    print(f"{case} sm_{arch}: {res['registers']} registers, {res['shared']} B shared, no spills")


if __name__ == "__main__":
    print(json.dumps(_compile_all(int(sys.argv[1]))))
