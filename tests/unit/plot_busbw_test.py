#!/usr/bin/env python3
"""bench/plot_busbw.py on a made-up benchmark JSON (the fields
bench/coll/*_perf -J writes): it must write one PNG per file and report
exactly the points where the automatic choice is more than 5% slower than
the fastest algorithm (two, made so on purpose). Skipped (77) without
matplotlib."""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

PLOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "plot_busbw.py")


def point(shape, size, times, auto, baseline="bcast"):
    best = min(times, key=times.get)
    bw = lambda t: size * 3 / 4 / t / 1e3  # noqa: E731 (GB/s of a made-up 4-rank run)
    return {"shape": shape, "bytes_per_rank": size, "imbalance": 1.0, "auto": auto, "time_us": times[auto],
            "busbw": bw(times[auto]), "best": best, "best_us": times[best],
            "speedup_baseline": times[baseline] / times[auto],
            "algos": {a: {"time_us": t, "busbw": bw(t), "wrong": 0} for a, t in times.items()}}


def main():
    if importlib.util.find_spec("matplotlib") is None:
        print("plot_busbw_test: no matplotlib: skipped")
        return 77
    pts = []
    for k in range(10, 25, 2):
        s = 1 << k
        t = {"bcast": 10 + s / 2e4, "pad": 8 + s / 4e4, "p2p": 9 + s / 3e4}
        pts.append(point("equal", s, t, "pad"))
        auto = "bcast" if k in (16, 20) else min(t, key=t.get)  # two misses on purpose
        pts.append(point("skew", s, t, auto))
    doc = {"collective": "allgatherv", "nranks": 4, "backend": "nccl", "nccl": 22803, "device": "made-up GPU",
           "type": "bfloat16", "op": "none", "tensors": 1, "graph": 0, "registered": 0, "baseline": "bcast",
           "points": pts}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "coll_agv_np4.json")
        json.dump(doc, open(path, "w"))
        out = subprocess.run([sys.executable, PLOT, path, "--out", d], capture_output=True, text=True,
                             check=True).stdout
        print(out)
        png = os.path.join(d, "coll_agv_np4.png")
        assert os.path.getsize(png) > 10000, "no plot written"
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert "auto > 5% slower than fastest at 2" in out, out
    assert out.count("   miss skew") == 2, out
    print("plot_busbw_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
