# Sourced by the GPU-machine scripts that build against another NCCL
# release (archives from scripts/nccl_pkg.py).

# nccl_unpack ARCHIVE: unpacks it under /tmp/nccl-pkg/ and prints that
# prefix (for meson -Dnccl_home); fails without output if it cannot.
nccl_unpack() {
  local home
  home=/tmp/nccl-pkg/$(basename "$1" .tar.xz)
  mkdir -p "$home" && tar -xJf "$1" -C "$home" && echo "$home"
}

# nccl_version: the version code of the libnccl.so.2 the loader finds now.
nccl_version() {
  python3 -c 'import ctypes; v = ctypes.c_int(); ctypes.CDLL("libnccl.so.2").ncclGetVersion(ctypes.byref(v)); print(v.value)' 2>&1
}
