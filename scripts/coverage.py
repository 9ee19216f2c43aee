#!/usr/bin/env python3
"""Line coverage of libvcoll's host code (gcc --coverage, gcov).

  scripts/coverage.py gcov BUILD OUTDIR
      runs gcov on every .gcda of BUILD/src (the library's C files; the
      device code of the .cu files is not instrumented) and keeps the
      .gcov files of src/ under OUTDIR.
  scripts/coverage.py report OUTDIR [OUTDIR ...] [--uncovered]
      per source file, the lines run by any of the OUTDIRs (e.g. the host
      suites here and the GPU suites on the device), and with --uncovered
      the lines none of them ran, with their text.

A build for it (any Meson this project supports):
  meson setup BUILD "-Dc_args=--coverage -O0" -Dc_link_args=--coverage \\
        -Dcpp_link_args=--coverage -Dcuda_link_args=-lgcov
(-O0 after the build type's flags: at -O2 gcc moves and merges lines, and
gcov then calls some lines that ran "never run"; device code is compiled
as before. The `install` test fails in such a build: the installed library
needs libgcov). scripts/gpu_session.sh takes these through VCOLL_MESON_ARGS.
"""
import glob
import os
import re
import subprocess
import sys


def run_gcov(build, outdir):
    gcdas = sorted(glob.glob(os.path.join(build, "src", "**", "*.gcda"), recursive=True))
    if not gcdas:
        sys.exit(f"coverage.py: no .gcda under {build}/src (not a coverage build, or nothing ran)")
    os.makedirs(outdir, exist_ok=True)
    kept = 0
    for k, gcda in enumerate(gcdas):
        # From the build folder, where the objects' relative source paths
        # resolve; -t: every source of the object (its headers too) on stdout,
        # each starting with a "Source:" line. A header that several objects
        # include gets one file per object; report sums them.
        rel = os.path.relpath(gcda, build)
        out = subprocess.run(["gcov", "-t", "-o", os.path.dirname(rel), rel], cwd=build,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False).stdout
        text = out.decode(errors="replace")
        for j, part in enumerate(re.split(r"(?m)^(?=\s*-:\s*0:Source:)", text)):
            src = source_of(part.splitlines())
            if src is None:
                continue
            with open(os.path.join(outdir, f"{k}-{j}.gcov"), "w") as fh:
                fh.write(part)
            kept += 1
    print(f"coverage.py: {kept} .gcov files of src/ from {len(gcdas)} .gcda files into {outdir}")


def source_of(lines):
    """The source's path from its 'src/' component, or None outside src/."""
    for line in lines:
        m = re.match(r"\s*-:\s*0:Source:(.*)$", line)
        if m:
            path = m.group(1).strip()
            i = path.rfind("src/")
            return path[i:] if i >= 0 else None
    return None


def parse(gcov_file):
    """{line number: (count or None for never run, text)} of executable lines."""
    lines = {}
    with open(gcov_file, errors="replace") as fh:
        for line in fh:
            parts = line.split(":", 2)
            if len(parts) < 3:
                continue
            count, num = parts[0].strip(), parts[1].strip()
            if count == "-" or not num.isdigit() or int(num) == 0:
                continue
            ran = None if count in ("#####", "=====") else int(count.rstrip("*"))
            lines[int(num)] = (ran, parts[2].rstrip("\n"))
    return lines


def report(dirs, uncovered):
    files = {}
    for d in dirs:
        for f in glob.glob(os.path.join(d, "*.gcov")):
            with open(f, errors="replace") as fh:
                src = source_of(fh)
            merged = files.setdefault(src, {})
            for num, (ran, text) in parse(f).items():
                was = merged.get(num, (None, text))[0]
                merged[num] = (ran if was is None else (was if ran is None else was + ran), text)
    if not files:
        sys.exit("coverage.py: no .gcov files in " + " ".join(dirs))
    tot = run = 0
    print(f"# line coverage of src/ over: {' '.join(dirs)}")
    print(f"{'file':40s} {'lines':>6s} {'run':>6s} {'%':>6s}")
    for src in sorted(files):
        n = len(files[src])
        r = sum(1 for ran, _ in files[src].values() if ran)
        tot, run = tot + n, run + r
        print(f"{src:40s} {n:6d} {r:6d} {100.0 * r / n if n else 100:6.1f}")
    print(f"{'total':40s} {tot:6d} {run:6d} {100.0 * run / tot if tot else 100:6.1f}")
    if uncovered:
        for src in sorted(files):
            missed = sorted(num for num, (ran, _) in files[src].items() if not ran)
            if not missed:
                continue
            print(f"\n## {src}: {len(missed)} lines never run")
            for num in missed:
                print(f"{num:5d}: {files[src][num][1]}")


def main(argv):
    if len(argv) == 4 and argv[1] == "gcov":
        run_gcov(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "report":
        args = [a for a in argv[2:] if a != "--uncovered"]
        report(args, "--uncovered" in argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
