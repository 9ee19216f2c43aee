#!/usr/bin/env python3
"""scripts/nccl_pkg.py's slimming, on a shared library of our own: nvcc
builds one kernel for sm_80 and sm_90 into a .so; after slim(.., 90) every
sm_80 payload must be zeros, every sm_90 payload unchanged byte for byte, and
everything outside the fat binaries' payloads unchanged too. Without nvcc it
reports skipped (exit 77).

  python3 tests/unit/nccl_pkg_test.py [NVCC]"""
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("nccl_pkg", os.path.join(HERE, "..", "..", "scripts", "nccl_pkg.py"))
nccl_pkg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nccl_pkg)

KERNEL = r"""
__global__ void scale(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
extern "C" void launch(float* x, int n) { scale<<<(n + 255) / 256, 256>>>(x, 2.0f, n); }
"""


def entries(path):
    b = open(path, "rb").read()
    secs = nccl_pkg.sections(path)
    out = []
    for name in (".nv_fatbin", "__nv_relfatbin"):
        if name in secs:
            out += [(name, off, n, kind, arch) for off, n, kind, arch in nccl_pkg.fatbin_entries(b, *secs[name])]
    return b, out


def main():
    nvcc = sys.argv[1] if len(sys.argv) > 1 else shutil.which("nvcc")  # meson passes the project's nvcc
    if not nvcc or not shutil.which("readelf"):
        print("nccl_pkg_test: no nvcc or readelf: skipped")
        return 77
    with tempfile.TemporaryDirectory() as t:
        cu, so = os.path.join(t, "k.cu"), os.path.join(t, "libk.so")
        open(cu, "w").write(KERNEL)
        # -rdc puts relocatable code in __nv_relfatbin as NCCL's build does.
        subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", "-rdc=true", "-gencode=arch=compute_80,code=sm_80",
                        "-gencode=arch=compute_90,code=sm_90", "-o", so, cu], check=True)
        before, ents = entries(so)
        # The parser's offsets, checked independently: every payload starts
        # with a cubin's ELF header (EM_CUDA, its section headers inside the
        # payload) or a zstd frame (compressed entries).
        for name, off, n, kind, arch in ents:
            head = before[off:off + 64]
            if head[:4] == b"\x7fELF":
                machine = struct.unpack_from("<H", head, 18)[0]
                shoff, = struct.unpack_from("<Q", head, 40)
                shentsize, shnum = struct.unpack_from("<HH", head, 58)
                assert machine == 190, f"{name} entry at {off:#x}: ELF machine {machine}, not EM_CUDA"
                assert shoff + shentsize * shnum <= n, f"{name} entry at {off:#x}: ELF runs past the payload"
            else:
                assert head[:4] == b"\x28\xb5\x2f\xfd", f"{name} entry at {off:#x} starts with {head[:4]!r}"
        archs = {(name, arch) for name, _, _, _, arch in ents}
        assert (".nv_fatbin", 80) in archs and (".nv_fatbin", 90) in archs, f"test library lacks targets: {archs}"
        report = nccl_pkg.slim(so, 90)
        after, ents2 = entries(so)
        assert len(before) == len(after), "slim changed the file size"
        assert [e[1:] for e in ents] == [e[1:] for e in ents2], "slim changed the fat binaries' layout"
        payload = bytearray(len(before))
        for name, off, n, kind, arch in ents:
            payload[off:off + n] = b"\x01" * n
            got = after[off:off + n]
            if name == ".nv_fatbin" and arch == 90:
                assert got == before[off:off + n], f"sm_90 payload at {off:#x} changed"
            else:
                assert got == bytes(n), f"{name} sm_{arch} payload at {off:#x} not zeroed"
        outside = [i for i in range(len(before)) if not payload[i] and before[i] != after[i]]
        assert not outside, f"bytes outside payloads changed, first at {outside[0]:#x}"
        # A library without the target keeps nothing: slim must refuse it.
        try:
            nccl_pkg.slim(so, 75)
        except SystemExit as e:
            assert "no sm_75 code" in str(e)
        else:
            raise AssertionError("slim(.., 75) accepted a library without sm_75 code")
        print("\n".join(report))
    print("nccl_pkg_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
