#!/usr/bin/env python3
"""Package another NCCL release for a test run on the GPU machine.

The GPU machine has NCCL 2.28.3 and no network. vcoll must be correct on
2.28 and later (2.29 fuses grouped broadcasts into an AllGatherV kernel), so
the suites should also run against newer releases. PyPI's nvidia-nccl-cu13
wheels carry them, but their libnccl.so.2 is about 240 MB: device code for
every GPU generation, more than the device tool carries (64 MiB).

This script downloads the wheel (pip, on this machine) and writes
.deps/nccl/nccl-VERSION-smARCH.tar.xz with include/ and lib/ (libnccl.so.2
plus the libnccl.so link), in which the device code of every other GPU
generation is zeroed out (same file layout, the zeros compress away):

  - .nv_fatbin, the fat binaries the CUDA runtime loads: entries (cubin or
    PTX) whose target is not smARCH get zero payloads; their headers stay,
    so the driver still walks the list and picks the smARCH cubin.
  - __nv_relfatbin, relocatable device code that only a device link
    (nvlink) reads, never the runtime: every payload zeroed.

On the GPU machine: carry the archive (the file, not .deps/nccl, which
also keeps the wheels) and set VCOLL_NCCL_PKG to its path for
scripts/gpu_session.sh, which unpacks it, builds vcoll against it (meson
-Dnccl_home) and runs everything with it.

  scripts/nccl_pkg.py 2.29.7 [--arch 90]
"""
import argparse
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile

FATBIN_MAGIC = 0xBA55ED50


def sections(path):
    """name -> (file offset, size) from readelf."""
    out = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True, check=True).stdout
    secs = {}
    for line in out.splitlines():
        if "]" not in line:
            continue
        f = line.split("]", 1)[1].split()
        if len(f) >= 5:
            try:
                secs[f[0]] = (int(f[3], 16), int(f[4], 16))
            except ValueError:
                pass
    return secs


def fatbin_entries(b, start, size):
    """Yields (payload offset, payload size, kind, arch) of every entry of
    every fat binary in b[start:start+size]; raises on a malformed one."""
    p, end = start, start + size
    while p < end:
        i = b.find(struct.pack("<I", FATBIN_MAGIC), p, end)
        if i < 0:
            return
        _, ver, hsz, fsz = struct.unpack_from("<IHHQ", b, i)
        if hsz < 16 or i + hsz + fsz > end:
            raise ValueError(f"fat binary at {i:#x}: header size {hsz}, size {fsz} overrun the section")
        q, fend = i + hsz, i + hsz + fsz
        while q < fend:
            kind, _, ehs, psz = struct.unpack_from("<HHIQ", b, q)
            arch = struct.unpack_from("<I", b, q + 28)[0]
            if ehs < 32 or q + ehs + psz > fend:
                raise ValueError(f"fat binary entry at {q:#x}: header {ehs}, payload {psz} overrun")
            yield q + ehs, psz, kind, arch
            q += ehs + psz
        p = fend


def slim(lib, arch):
    b = bytearray(open(lib, "rb").read())
    secs = sections(lib)
    report = []
    for name, keep in ((".nv_fatbin", True), ("__nv_relfatbin", False)):
        if name not in secs:
            continue
        kept = zeroed = 0
        archs = set()
        for off, n, kind, a in fatbin_entries(b, *secs[name]):
            archs.add(a)
            if keep and a == arch:
                kept += n
            else:
                b[off:off + n] = bytes(n)
                zeroed += n
        report.append(f"{name}: targets {sorted(archs)}, kept {kept >> 20} MiB (sm_{arch}), zeroed {zeroed >> 20} MiB")
        if keep and kept == 0:
            sys.exit(f"nccl_pkg: {lib} has no sm_{arch} code in {name}")
    open(lib, "wb").write(b)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("version", help="nvidia-nccl-cu13 version, e.g. 2.29.7")
    ap.add_argument("--arch", type=int, default=90, help="GPU target to keep (default 90)")
    ap.add_argument("--out", default=".deps/nccl", help="output folder (default .deps/nccl)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    whl_dir = os.path.join(a.out, "wheels")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", whl_dir,
                    f"nvidia-nccl-cu13=={a.version}"], check=True)
    whl = [f for f in os.listdir(whl_dir) if f.startswith(f"nvidia_nccl_cu13-{a.version}-")]
    if not whl:
        sys.exit(f"nccl_pkg: no wheel for {a.version} in {whl_dir}")
    with tempfile.TemporaryDirectory() as t:
        zipfile.ZipFile(os.path.join(whl_dir, whl[0])).extractall(t)
        root = os.path.join(t, "nvidia", "nccl")
        lib = os.path.join(root, "lib", "libnccl.so.2")
        for line in slim(lib, a.arch):
            print(line)
        link = os.path.join(root, "lib", "libnccl.so")
        if not os.path.lexists(link):
            os.symlink("libnccl.so.2", link)
        dst = os.path.join(a.out, f"nccl-{a.version}-sm{a.arch}.tar.xz")
        with tarfile.open(dst, "w:xz", preset=6) as tf:
            tf.add(os.path.join(root, "include"), arcname="include")
            tf.add(os.path.join(root, "lib"), arcname="lib")
    print(f"{dst}: {os.path.getsize(dst) >> 20} MiB")


if __name__ == "__main__":
    main()
