#!/usr/bin/env python3
"""Selection tables from measurements: reads the JSON of allgatherv_perf or
reducescatterv_perf (-J; out-of-place times of every algorithm at every
shape and size), and prints

  1. how the automatic choice recorded in the run did: per point its time
     over the fastest algorithm's, and the points more than 5% slower
     (the issue's bar), with the mean speedup over the baseline at
     256 KB-16 MB per rank; then the same for the table now in the C
     source (--source; agvRules229 for NCCL >= 2.29), so that an edited
     table can be scored on recorded data without a GPU;
  2. a fitted rule table in the form of agvRules / rsvRules
     (src/coll/allgatherv.c, reducescatterv.c): first match of
     (bytes per rank <= maxBytes, imbalance <= maxImbalance) -> algorithm,
     built band by band of imbalance and run by run of size, keeping an
     algorithm while it is within --tol of the fastest; and how that table
     would have done on the same points.

Points the selection decides before its table are left out of the fit and
listed: equal sizes on registered buffers (native) and one rank holding at
least 3/4 of the rows (bcast / reduce). Several files (2 and 4 ranks) fit
one table that serves both. The fitted table is a proposal to read, not to
paste blindly: with few points per band it follows noise.

    python3 bench/fit_rules.py OUT/coll_agv_np2.json OUT/coll_agv_np4.json
"""
import argparse
import json
import math
import os
import re
import sys

BAR = 1.05  # the bar: no more than 5% slower than the fastest


def human(n):
    if n == math.inf:
        return "SIZE_MAX"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"(size_t){n >> shift} << {shift}"
    return str(int(n))


def load(paths):
    pts, meta = [], None
    nccl, dtype = None, None
    for path in paths:
        try:
            with open(path) as f:
                d = json.load(f)
            d["collective"], d["points"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"fit_rules: {path}: not a benchmark JSON (-J) file: {e}")
        m = (d["collective"], d.get("op"), d.get("baseline"))
        if meta and m[0] != meta[0]:
            sys.exit(f"fit_rules: {path} is {m[0]}, not {meta[0]}")
        meta = meta or m
        nccl, dtype = d.get("nccl"), d.get("type")
        for p in d["points"]:
            times = {a: v["time_us"] for a, v in p["algos"].items()
                     if v.get("time_us") is not None and v["time_us"] > 0 and not v.get("wrong")}
            if not times:
                continue
            pts.append(dict(n=d["nranks"], shape=p["shape"], size=p["bytes_per_rank"], imb=p["imbalance"],
                            times=times, auto=p.get("auto"), auto_us=p.get("time_us"),
                            registered=d.get("registered", 0), graph=d.get("graph", 0)))
    return pts, meta + (nccl, dtype)


ROW = re.compile(r'\{\s*(SIZE_MAX|\(size_t\)\s*(\d+)\s*<<\s*(\d+)|\d+)\s*,\s*(DBL_MAX|[\d.]+)\s*,'
                 r'\s*(?:([01])\s*,\s*)?"(\w+)"\s*\}')


def source_rules(path, array):
    """The rows of `array` (e.g. agvRules) in a C source: [(maxBytes,
    maxImbalance, symmOpOnly, algo)]."""
    with open(path) as f:
        text = f.read()
    m = re.search(re.escape(array) + r"\[\]\s*=\s*\{(.*?)\n\};", text, re.S)
    if not m:
        sys.exit(f"fit_rules: no {array}[] in {path}")
    rows = []
    for r in ROW.finditer(m.group(1)):
        size = math.inf if r.group(1) == "SIZE_MAX" else (
            int(r.group(2)) << int(r.group(3)) if r.group(2) else int(r.group(1)))
        imb = math.inf if r.group(4) == "DBL_MAX" else float(r.group(4))
        rows.append((size, imb, int(r.group(5) or 0), r.group(6)))
    return rows


def symm_op(op, dtype):
    """reducescatterv's rsvSymmOp: sum/avg of the floating-point types of 32 bits or less."""
    return op in ("sum", "avg") and dtype in ("float", "half", "bfloat16", "f8e4m3", "f8e5m2")


def decided_before_table(p, coll, avg_gate=False):
    if avg_gate:  # reducescatterv.c's rsvNcclAvgOk: avg on NCCL >= 2.31 goes to the grouped ncclReduce
        return "reduce"
    if p["registered"] and abs(p["imb"] - 1.0) < 1e-9:
        return "native"
    if p["imb"] >= 0.75 * p["n"] and abs(p["imb"] - 1.0) > 1e-9:
        return "bcast" if coll == "allgatherv" else "reduce"
    return None


def choose(rules, p, default):
    for max_bytes, max_imb, algo in rules:
        if p["size"] <= max_bytes and p["imb"] <= max_imb + 1e-9:
            return algo
    return default


def slowdown(p, algo):
    best = min(p["times"].values())
    t = p["times"].get(algo)
    return (t / best) if t else math.inf


def fit(pts, tol, default):
    """Bands of imbalance: each distinct measured imbalance closes one band;
    inside a band, sizes ascending, an algorithm is kept while its worst
    slowdown over the band's points at that size stays within tol."""
    imbs = sorted({round(p["imb"], 6) for p in pts})
    bands, lo = [], -1.0  # [hi, runs]
    for hi in imbs:
        band = [p for p in pts if lo < round(p["imb"], 6) <= hi]
        lo = hi
        sizes = sorted({p["size"] for p in band})
        runs = []  # [algo, last size]
        for s in sizes:
            cell = [p for p in band if p["size"] == s]
            algos = set.intersection(*(set(p["times"]) for p in cell))
            if not algos:
                continue
            worst = {a: max(slowdown(p, a) for p in cell) for a in algos}
            best = min(worst, key=worst.get)
            if runs and runs[-1][0] in worst and worst[runs[-1][0]] <= worst[best] * tol:
                runs[-1][1] = s
            else:
                runs.append([best, s])
        if runs:
            runs[-1][1] = math.inf  # a band's last run covers every larger size
            if bands and bands[-1][1] == runs:
                bands[-1][0] = hi  # the same runs as the band below: one band
            else:
                bands.append([hi, runs])
    if bands:
        bands[-1][0] = math.inf  # the widest band's rows serve every larger imbalance
    rules = [(last, hi, algo) for hi, runs in bands for algo, last in runs]
    # Rules at the very end that only repeat the fall-through are dropped.
    while rules and rules[-1][0] == math.inf and rules[-1][1] == math.inf and rules[-1][2] == default:
        rules.pop()
    return rules


def report(name, pts, pick, baseline):
    miss, ratios = [], []
    for p in pts:
        a = pick(p)
        s = slowdown(p, a)
        if s > BAR:
            miss.append((p, a, s))
        if 256 << 10 <= p["size"] <= 16 << 20 and baseline in p["times"] and a in p["times"]:
            ratios.append(p["times"][baseline] / p["times"][a])
    mean = sum(ratios) / len(ratios) if ratios else float("nan")
    print(f"# {name}: {len(pts) - len(miss)} of {len(pts)} points within 5% of the fastest; "
          f"mean speedup over {baseline} at 256 KB-16 MB per rank: {mean:.3f} ({len(ratios)} points)")
    for p, a, s in sorted(miss, key=lambda m: -m[2]):
        best = min(p["times"], key=p["times"].get)
        print(f"#   np {p['n']} {p['shape']:7s} {p['size']:>10d} B/rank imb {p['imb']:.2f}: {a} is {s:.2f}x "
              f"the fastest ({best})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--tol", type=float, default=1.03, help="keep an algorithm within this factor (1.03)")
    ap.add_argument("--source", help="C file whose table to score (default: src/coll/allgatherv.c or "
                    "reducescatterv.c beside this script's tree); 'none' to skip")
    args = ap.parse_args()
    pts, (coll, op, baseline, nccl, dtype) = load(args.json)
    default = "bcast" if coll == "allgatherv" else "reduce"
    print(f"# {coll} (op {op}), {len(pts)} points from {len(args.json)} file(s)")
    if not pts:
        sys.exit(0)
    gate = coll == "reducescatterv" and op == "avg" and (nccl or 0) >= 23100
    if gate:
        print("# avg on NCCL >= 2.31: reducescatterv.c sends every call to reduce before its table "
              "(docs/algorithms.md, NCCL releases); the fit below ignores that")
    pre = [p for p in pts if decided_before_table(p, coll, gate)]
    table = [p for p in pts if not decided_before_table(p, coll, gate)]
    for p in pre:
        a = decided_before_table(p, coll, gate)
        print(f"#   before the table: np {p['n']} {p['shape']} {p['size']} B/rank imb {p['imb']:.2f} -> {a}, "
              f"{slowdown(p, a):.2f}x the fastest")
    recorded = [p for p in pts if p["auto"] in p["times"]]
    report("recorded automatic choice", recorded, lambda p: p["auto"], baseline)
    src = args.source or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "coll",
                                      coll + ".c")
    if src != "none" and os.path.exists(src):
        array = ("agvRules229" if (nccl or 0) >= 22900 else "agvRules") if coll == "allgatherv" else "rsvRules"
        rows = [(mb, mi, a) for mb, mi, symm, a in source_rules(src, array) if not symm or symm_op(op, dtype)]
        report(f"table {array}[] of {os.path.basename(src)}", pts,
               lambda p: decided_before_table(p, coll, gate) or choose(rows, p, default), baseline)
    rules = fit(pts if gate else table, args.tol, default)
    report("fitted table", pts, lambda p: decided_before_table(p, coll) or choose(rules, p, default), baseline)
    print("# fitted rules (first match; falls through to " + default + "):")
    for mb, mi, algo in rules:
        imb = "DBL_MAX" if mi == math.inf else f"{mi:.2f}"
        symm = f" {int(algo == 'pad_symm')}," if coll == "reducescatterv" else ""  # rsvRules' symmOpOnly
        print(f"    {{{human(mb)}, {imb},{symm} \"{algo}\"}},")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # | head
        sys.exit(0)
