#!/usr/bin/env python3
"""Line coverage of libvcoll's C files (gcc --coverage, gcov).

  scripts/coverage.py gcov BUILD OUTDIR
      runs gcov on every .gcda of BUILD/src and keeps, in OUTDIR (emptied
      of earlier .gcov files first), one .gcov per source of src/ and
      object, its "Source:" line rewritten to the path from the repository
      root. Only the C files count: nvcc compiles the .cu files (their host
      code too) without coverage.
  scripts/coverage.py report OUTDIR [OUTDIR ...] [--uncovered]
      per source file, the executable lines, those run in full by any of
      the OUTDIRs (e.g. the host suites here and the GPU suites on the
      device) and those only partly run (gcov's "*": some block of the line
      never ran, e.g. the return of `if (bad) return error;`); with
      --uncovered, the lines never run and (marked *) the partly run ones,
      with their text.

A build for it (any Meson this project supports):
  meson setup BUILD "-Dc_args=--coverage -O0" -Dc_link_args=--coverage \\
        -Dcpp_link_args=--coverage -Dcuda_link_args=-lgcov
(-O0 after the build type's flags: at -O2 gcc moves and merges lines, and
gcov then calls some lines that ran "never run". The `install` test fails
in such a build: the installed library needs libgcov.) Through
scripts/gpu_session.sh, which splits VCOLL_MESON_ARGS at spaces: CFLAGS="--coverage -O0"
BUILD_DIR=build-cov VCOLL_MESON_ARGS="-Dc_link_args=--coverage
-Dcpp_link_args=--coverage -Dcuda_link_args=-lgcov" (a new build folder:
CFLAGS counts at its first setup only).
"""
import glob
import os
import re
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_RE = re.compile(r"^(\s*-:\s*0:Source:)(.*)$", re.M)


def run_gcov(build, outdir):
    build = os.path.abspath(build)
    gcdas = sorted(glob.glob(os.path.join(build, "src", "**", "*.gcda"), recursive=True))
    if not gcdas:
        sys.exit(f"coverage.py: no .gcda under {build}/src (not a coverage build, or nothing ran)")
    os.makedirs(outdir, exist_ok=True)
    for old in glob.glob(os.path.join(outdir, "*.gcov")):
        os.remove(old)
    kept = 0
    for k, gcda in enumerate(gcdas):
        # From the build folder, where the objects' relative source paths
        # resolve; -t: every source of the object (its headers too) on stdout,
        # each starting with a "Source:" line. A header that several objects
        # include gets one file per object; report sums them.
        rel = os.path.relpath(gcda, build)
        proc = subprocess.run(["gcov", "-t", "-o", os.path.dirname(rel), rel], cwd=build,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        err = proc.stderr.decode(errors="replace").strip()
        if proc.returncode != 0 or err:
            print(f"coverage.py: gcov {rel}: exit {proc.returncode}" + (f": {err}" if err else ""), file=sys.stderr)
        text = proc.stdout.decode(errors="replace")
        for j, part in enumerate(re.split(r"(?m)^(?=\s*-:\s*0:Source:)", text)):
            m = SOURCE_RE.search(part)
            if m is None:
                continue
            path = os.path.normpath(os.path.join(build, m.group(2).strip()))
            src = os.path.relpath(path, REPO)
            if not src.startswith("src" + os.sep):
                continue
            part = part[:m.start(2)] + src + part[m.end(2):]
            with open(os.path.join(outdir, f"{k}-{j}.gcov"), "w") as fh:
                fh.write(part)
            kept += 1
    print(f"coverage.py: {kept} .gcov files of src/ from {len(gcdas)} .gcda files into {outdir}")


def parse(gcov_file):
    """(source path, {line number: (runs or None when never run, partly run, text)})
    over the file's executable lines."""
    src, lines = None, {}
    with open(gcov_file, errors="replace") as fh:
        for line in fh:
            m = SOURCE_RE.match(line.rstrip("\n"))
            if m:
                # Files of an older coverage.py kept gcov's path, relative
                # to a build folder inside the repository ("../src/...").
                src = re.sub(r"^(\.\./)+", "", os.path.normpath(m.group(2).strip()))
                continue
            parts = line.split(":", 2)
            if len(parts) < 3:
                continue
            count, num = parts[0].strip(), parts[1].strip()
            if count == "-" or not num.isdigit() or int(num) == 0:
                continue
            never = count in ("#####", "=====")
            runs = None if never else int(count.rstrip("*"))
            lines[int(num)] = (runs, count.endswith("*"), parts[2].rstrip("\n"))
    return src, lines


def report(dirs, uncovered):
    files = {}
    for d in dirs:
        for f in glob.glob(os.path.join(d, "*.gcov")):
            src, lines = parse(f)
            if src is None:
                continue
            merged = files.setdefault(src, {})
            for num, (runs, partly, text) in lines.items():
                if num not in merged:
                    merged[num] = (runs, partly, text)
                    continue
                was, waspartly, wastext = merged[num]
                if wastext != text:
                    print(f"coverage.py: {src}:{num} differs between the runs (other revisions?)", file=sys.stderr)
                total = None if was is None and runs is None else (was or 0) + (runs or 0)
                # Run in full if some object or run ran every block of it.
                full = (was is not None and not waspartly) or (runs is not None and not partly)
                merged[num] = (total, total is not None and not full, wastext)
    if not files:
        sys.exit("coverage.py: no .gcov files in " + " ".join(dirs))
    tot = run = part = 0
    print(f"# line coverage of src/ (C files) over: {' '.join(dirs)}")
    print(f"{'file':40s} {'lines':>6s} {'run':>6s} {'partly':>6s} {'%run':>6s}")
    for src in sorted(files):
        n = len(files[src])
        r = sum(1 for runs, partly, _ in files[src].values() if runs and not partly)
        p = sum(1 for runs, partly, _ in files[src].values() if runs and partly)
        tot, run, part = tot + n, run + r, part + p
        print(f"{src:40s} {n:6d} {r:6d} {p:6d} {100.0 * r / n if n else 100:6.1f}")
    print(f"{'total':40s} {tot:6d} {run:6d} {part:6d} {100.0 * run / tot if tot else 100:6.1f}")
    if uncovered:
        for src in sorted(files):
            missed = sorted(num for num, (runs, partly, _) in files[src].items() if not runs or partly)
            if not missed:
                continue
            never = sum(1 for num in missed if not files[src][num][0])
            print(f"\n## {src}: {never} lines never run, {len(missed) - never} partly (*)")
            for num in missed:
                runs, _, text = files[src][num]
                print(f"{num:5d}{' ' if not runs else '*'}: {text}")


def main(argv):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `report | head` ends quietly
    if len(argv) == 4 and argv[1] == "gcov":
        run_gcov(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "report":
        args = [a for a in argv[2:] if a != "--uncovered"]
        report(args, "--uncovered" in argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
