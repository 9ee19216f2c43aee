#!/usr/bin/env python3
"""NVFP4 CPU reference against an independent recomputation with numpy fp32
arithmetic and ml_dtypes' float4_e2m1fn / float8_e4m3fn casts (suite unit).
Calls vcollNvfp4QuantizeRef in libvcoll through ctypes on fresh random data
(normal, heavy tailed, zero blocks, given and computed scale, exact E2M1 ties). Exits 77
(skipped) when numpy or ml_dtypes is missing: pip install numpy ml_dtypes.
    nvfp4_mldtypes.py path/to/libvcoll.so"""
import ctypes, os, sys, time

try:
    import numpy as np
    import ml_dtypes as md
except ImportError as e:
    print(f"# skipped: {e} (pip install numpy ml_dtypes)")
    sys.exit(77)

lib = ctypes.CDLL(sys.argv[1])
f = lib.vcollNvfp4QuantizeRef
f.restype = ctypes.c_int
f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_float),
              ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
FLOAT32 = 7

seed = int(os.environ.get("VCOLL_TEST_SEED", time.time_ns() % (1 << 63)))
print(f"# seed {seed} (set VCOLL_TEST_SEED to repeat)")
rng = np.random.default_rng(seed)


def reference(x, gs, computed):
    """The recipe of docs/nvfp4.md in numpy fp32, conversions by ml_dtypes."""
    f32 = np.float32
    if computed:
        a = np.abs(x[np.isfinite(x)])
        amax = a.max() if a.size else f32(0)
        gs = np.minimum(f32(2688) / amax, np.finfo(np.float32).max) if amax > 0 else f32(1)
    gs = f32(gs)
    blocks = x.reshape(-1, 16)
    amaxb = np.abs(blocks).max(axis=1)  # NaN propagates, as in the recipe
    sf_in = amaxb * (gs * (f32(1) / f32(6)))
    sf = np.clip(sf_in, -448, 448).astype(md.float8_e4m3fn)
    sf_bits = np.where(np.isnan(sf_in), np.uint8(0x7F), sf.view(np.uint8))
    sfv = sf_bits.view(md.float8_e4m3fn).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out_scale = np.where(amaxb != 0, np.fmin(f32(1) / (sfv * (f32(1) / gs)), np.finfo(np.float32).max), f32(0))
        p = (blocks * out_scale[:, None].astype(np.float32)).astype(np.float32)
    q = np.clip(p, -6, 6).astype(md.float4_e2m1fn).view(np.uint8) & 0xF
    q = np.where(np.isnan(p), np.uint8(7), q)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    return gs, packed, sf_bits


def ties(rows, cols):
    """Blocks whose scaled values fall exactly on E2M1 ties (0.25, 0.75, ...,
    5) and codes: each block's first value is +-6, so with the given scales
    1, 2 and 0.5 the block scale is exact and the values are quantized as
    they are; random data almost never reaches a tie."""
    vals = np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    x = rng.choice(vals, size=(rows, cols)) * rng.choice(np.float32([-1, 1]), size=(rows, cols))
    x.reshape(-1, 16)[:, 0] = rng.choice(np.float32([-6, 6]), size=rows * cols // 16)
    return x.astype(np.float32)


NCASES = 15
failures = 0
for case in range(NCASES):
    rows, cols = int(rng.integers(1, 200)), 16 * int(rng.integers(1, 40))
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if case % 3 == 1:
        x = (x / (np.abs(rng.standard_normal((rows, cols))) + 1e-3)).astype(np.float32)
    if case % 3 == 2:
        x.reshape(-1, 16)[::3] = 0
    computed = case % 2
    gs_in = np.float32([1.0, 6.0, 448.0, 0.37, 1e-30, 1e30][case % 6])
    if case >= 12:  # exact ties, given scale
        x, computed, gs_in = ties(rows, cols), 0, np.float32([1.0, 2.0, 0.5][case - 12])
    gs = ctypes.c_float(gs_in)
    pay = np.full(rows * cols // 2, 0xA5, np.uint8)  # poisoned: every byte must be written
    sc = np.full(rows * cols // 16, 0xA5, np.uint8)
    res = f(x.ctypes.data, FLOAT32, rows, cols, ctypes.byref(gs), computed, pay.ctypes.data, sc.ctypes.data, 0)
    assert res == 0, f"vcollNvfp4QuantizeRef returned {res}"
    rgs, rpay, rsc = reference(x, gs_in, computed)
    ok = np.float32(gs.value).tobytes() == np.float32(rgs).tobytes() and np.array_equal(pay, rpay) and np.array_equal(sc, rsc)
    if not ok:
        failures += 1
        print(f"case {case} ({rows} x {cols}, computed {computed}): gs {gs.value} vs {rgs}, "
              f"{int((pay != rpay).sum())} payload and {int((sc != rsc).sum())} scale bytes differ")
print(f"# {NCASES - failures} of {NCASES} cases match ml_dtypes (the last 3 on exact ties)")
sys.exit(1 if failures else 0)
