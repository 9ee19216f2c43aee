# Sourced by the GPU-machine scripts: that machine has no cmocka, so when
# pkg-config does not find it, unpack the carried Debian packages
# (.deps/debs: libcmocka0, libcmocka-dev) into /tmp/deps and point
# pkg-config and the loader there. Run from the repository root.
if ! pkg-config --exists cmocka 2>/dev/null && ls .deps/debs/*.deb >/dev/null 2>&1; then
  for d in .deps/debs/*.deb; do dpkg -x "$d" /tmp/deps; done
  # its paths are absolute: /usr -> /tmp/deps/usr
  sed -i 's|/usr|/tmp/deps/usr|g' /tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig/cmocka.pc
  export PKG_CONFIG_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
