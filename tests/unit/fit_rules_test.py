#!/usr/bin/env python3
"""bench/fit_rules.py on made-up measurements whose best table is known:
equal sizes -> pad_symm up to 1 MB then native; imbalance 1.5 -> p2p up to
4 MB then bcast; one rank holding all (imbalance = nranks) decided before
the table. Checks the fitted rules, their score, and the report of the
recorded choice (one point made 20% slow on purpose)."""
import json
import os
import subprocess
import sys
import tempfile

FIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "fit_rules.py")
SIZES = [1 << k for k in range(10, 27, 2)]  # 1 KB .. 64 MB


def point(shape, size, imb, times, auto):
    return {"shape": shape, "bytes_per_rank": size, "imbalance": imb, "auto": auto, "time_us": times[auto],
            "algos": {a: {"time_us": t, "busbw": 1.0, "wrong": 0} for a, t in times.items()}}


def main():
    pts = []
    for s in SIZES:
        base = 10.0 + s / 1e5
        eq = {"bcast": base * 1.6, "p2p": base * 1.3, "pad": base * 1.2,
              "pad_symm": base * (1.0 if s <= 1 << 20 else 1.3), "native": base * (1.1 if s <= 1 << 20 else 1.0)}
        pts.append(point("equal", s, 1.0, eq, "pad_symm" if s <= 1 << 20 else "native"))
        sk = {"bcast": base * (1.5 if s <= 4 << 20 else 1.0), "p2p": base * (1.0 if s <= 4 << 20 else 1.4),
              "pad": base * 1.8, "pad_symm": base * 1.7}
        auto = "p2p" if s <= 4 << 20 else "bcast"
        if s == 1 << 16:  # a recorded choice 20% slower than the fastest (p2p)
            auto = "pad"
            sk["pad"] = sk["p2p"] * 1.2
        pts.append(point("skew", s, 1.5, sk, auto))
        one = {"bcast": base, "p2p": base * 2, "pad": base * 3, "pad_symm": base * 3}
        pts.append(point("one", s, 4.0, one, "bcast"))
    doc = {"collective": "allgatherv", "nranks": 4, "backend": "nccl", "nccl": 22803, "op": "none",
           "baseline": "bcast", "registered": 0, "graph": 0, "points": pts}
    # A C table like allgatherv.c's, equal to the best one: it must score every point.
    csrc = ("static const struct agvRule agvRules[] = {\n    {(size_t)1 << 20, 1.0, \"pad_symm\"},  /* x */\n"
            "    {SIZE_MAX, 1.0, \"native\"},\n    {(size_t)4 << 20, DBL_MAX, \"p2p\"},\n};\n")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
        path = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write(csrc)
        cpath = f.name
    try:
        out = subprocess.run([sys.executable, FIT, path, "--source", cpath], capture_output=True, text=True,
                             check=True).stdout
        # The repository's own tables parse (no assertion on their score: made-up data).
        subprocess.run([sys.executable, FIT, path], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
        os.unlink(cpath)
    print(out)
    rules = [line.strip() for line in out.splitlines() if line.startswith("    {")]
    want = ['{(size_t)1 << 20, 1.00, "pad_symm"},', '{SIZE_MAX, 1.00, "native"},',
            '{(size_t)4 << 20, DBL_MAX, "p2p"},']
    ok = True
    if rules != want:
        print(f"FAIL: fitted rules {rules}, want {want}")
        ok = False
    fitted = [line for line in out.splitlines() if line.startswith("# fitted table:")]
    if not fitted or not fitted[0].startswith(f"# fitted table: {len(pts)} of {len(pts)} points within 5%"):
        print(f"FAIL: fitted table's score: {fitted}")
        ok = False
    rec = [line for line in out.splitlines() if line.startswith("# recorded automatic choice:")]
    if not rec or not rec[0].startswith(f"# recorded automatic choice: {len(pts) - 1} of {len(pts)}"):
        print(f"FAIL: recorded choice's score: {rec}")
        ok = False
    if "65536 B/rank imb 1.50: pad is 1.20x the fastest (p2p)" not in out:
        print("FAIL: the slow recorded point is not listed")
        ok = False
    src = [line for line in out.splitlines() if line.startswith("# table agvRules[]")]
    if not src or f": {len(pts)} of {len(pts)} points within 5%" not in src[0]:
        print(f"FAIL: the C table's score: {src}")
        ok = False
    before = [line for line in out.splitlines() if "before the table" in line]
    if len(before) != len(SIZES):
        print(f"FAIL: {len(before)} points decided before the table, want {len(SIZES)}")
        ok = False
    print("fit_rules: OK" if ok else "fit_rules: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
