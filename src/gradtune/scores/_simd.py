"""Building blocks for the fused kernels that LLVM can vectorize (needs ``numba``).

``math.exp`` compiles to a call into libm, which keeps a loop scalar: at ~30 ns a row,
the softmax residual of a two-class row cost a quarter of reading a 768-float row
from cache. :func:`exp_nonpos` is ``exp`` for arguments <= 0 written with
arithmetic only (Cody-Waite range reduction, a degree-13 polynomial and an exponent
built from bits), so a loop over rows of it runs on SIMD lanes. :func:`prefetch`
asks for a cache line ahead of use; streaming rows of a few KB out of a large array
on Intel CPUs, the hardware prefetcher alone left the dot products waiting on memory
(on AMD it keeps up, and software prefetch only costs: ``SOFTWARE_PREFETCH_PAYS``).

Importing this module imports numba; :mod:`gradtune.scores._fused` does so only when
numba is installed. numba keys the kernels' disk cache on the file that defines them
(:mod:`gradtune.scores._fused_kernels`), not on this one: after editing this file,
touch that one (or delete its ``__pycache__/*.nb*``), or the old machine code is loaded.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["EXP_MIN_ARG", "SOFTWARE_PREFETCH_PAYS", "exp_nonpos", "prefer_wide_vectors", "prefetch"]

_FM = {"reassoc", "contract"}  # no nnan/ninf/afn: IEEE NaN/inf semantics kept

# Below this argument exp's result is not a normal float64 (2**-1022 ~ 2.2e-308):
# exp_nonpos returns exp(EXP_MIN_ARG) there, and callers redo such entries with math.exp.
EXP_MIN_ARG = -708.0
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = 1.90821492927058770002e-10
# 1/k! for k = 13 .. 2: Taylor coefficients of exp on |r| <= ln2 / 2, where the degree-13
# truncation error is below 4.3e-18 relative (r**14 / 14!), under a float64 ulp.
_C13, _C12, _C11, _C10 = 1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0
_C9, _C8, _C7, _C6 = 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0
_C5, _C4, _C3, _C2 = 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5


@intrinsic
def _bits_to_float64(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits`` (a register move, vectorizable)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _float64_to_bits(typingctx, x):
    """The IEEE bits of the float64 ``x`` as an int64 (a register move, vectorizable)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


# An integer-valued float64 k with |k| < 2**51, plus this, is exact, and its low bits
# then hold k in two's complement: how k becomes an int64 without a float-to-int
# conversion (which AVX2 lacks for 64-bit lanes, so LLVM would leave it scalar).
_INT_SHIFT = 6755399441055744.0  # 1.5 * 2**52
_INT_SHIFT_BITS = 0x4338000000000000


@intrinsic
def prefetch(typingctx, arr, index):
    """Hint the CPU to load the cache line holding ``arr[index]`` (1-D array) into all
    cache levels; a no-op semantically, never faults (even out of bounds)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.PointerType(ir.IntType(8))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        # The intrinsic is overloaded on the pointer type: "p0" with opaque pointers (LLVM 15+), "p0i8" before.
        name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


# CPUs whose clock drops while 512-bit instructions run: there LLVM's 256-bit default stays.
_THROTTLING_AVX512 = ("skylake-avx512", "cascadelake", "cooperlake", "knl", "knm")
# AMD CPUs (LLVM's names): there software prefetch made the fused stream slower (on Zen,
# CelebA-sized features took 1.33x a read with it and 1.15x without); the hardware
# prefetcher keeps up alone.
_AMD_CPU_PREFIXES = ("znver", "bdver", "btver", "amdfam", "barcelona", "athlon", "opteron", "k8")


def _host_cpu() -> tuple[str, bool]:
    """LLVM's name for this CPU, and whether it has AVX-512 (("", False) if unknown)."""
    try:
        from llvmlite import binding

        return str(binding.get_host_cpu_name()), bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:
        return "", False


HOST_CPU, _HAS_AVX512 = _host_cpu()
# Only with AVX-512: on an AVX2-only Zen CPU the attribute made LLVM split 512-bit vectors
# into pairs, and the one-thread stream ran 1.5-1.9x slower.
WIDE_VECTORS = _HAS_AVX512 and HOST_CPU not in _THROTTLING_AVX512
SOFTWARE_PREFETCH_PAYS = not HOST_CPU.startswith(_AMD_CPU_PREFIXES)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the calling function's loops 512 bits wide where the CPU has
    AVX-512 (the ``prefer-vector-width`` function attribute, as clang's
    ``-mprefer-vector-width=512``). LLVM's tuning for several AVX-512 CPUs keeps loops
    256 bits wide; the dot products of the fused kernels then issue twice the
    instructions. Not set on CPUs without AVX-512 (where it slowed the kernels down), on
    those listed in ``_THROTTLING_AVX512``, or where the attribute cannot be set."""

    def codegen(context, builder, signature, args):
        if WIDE_VECTORS:
            try:  # llvmlite renders a string attribute verbatim; its API knows only flag attributes
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:
                pass
        return context.get_dummy_value()

    return types.void(), codegen


@njit(fastmath=_FM, inline="always", nogil=True)
def exp_nonpos(x):
    """``exp(x)`` for float64 ``x <= 0``, within ~2 ulp, for arguments ``>= EXP_MIN_ARG``.

    Below ``EXP_MIN_ARG`` (including -inf) it returns ``exp(EXP_MIN_ARG)`` (callers that
    need those tiny values redo them with ``math.exp``); NaN gives NaN. Positive
    arguments are outside its contract. ``x = k ln2 + r`` with integer ``k`` and
    ``|r| <= ln2 / 2``; ``exp(r)`` by Horner; ``2**k`` from its exponent bits, with
    ``k`` read from the bits of ``kf + _INT_SHIFT`` (see there).
    """
    xc = EXP_MIN_ARG if x < EXP_MIN_ARG else x
    kf = np.floor(xc * _LOG2E + 0.5)  # a float (math.floor gives an int: a scalar conversion)
    # NaN: k is then some integer (bits, no undefined float-to-int conversion) and r stays NaN.
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = _C13
    p = p * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    k = _float64_to_bits(kf + _INT_SHIFT) - _INT_SHIFT_BITS
    return p * _bits_to_float64((k + 1023) << 52)
