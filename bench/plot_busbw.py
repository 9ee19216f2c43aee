#!/usr/bin/env python3
"""Bus bandwidth vs size per shape, vcoll's automatic choice against each
algorithm, from the JSON of bench/coll/*_perf (-J). One PNG per JSON file.

    python3 bench/plot_busbw.py OUT/coll_*.json --out OUT
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def human(n):
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:g}{unit}"
        n /= 1024
    return f"{n:g}T"


def plot(path, outdir):
    with open(path) as f:
        data = json.load(f)
    points = data["points"]
    shapes = list(dict.fromkeys(p["shape"] for p in points))
    algos = list(dict.fromkeys(a for p in points for a in p["algos"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        pts = sorted((p for p in points if p["shape"] == shape), key=lambda p: p["bytes_per_rank"])
        x = [p["bytes_per_rank"] for p in pts]
        for a in algos:
            xs = [p["bytes_per_rank"] for p in pts if a in p["algos"]]
            ys = [p["algos"][a]["busbw"] for p in pts if a in p["algos"]]
            style = "--" if a == data.get("baseline") else ":"
            ax.plot(xs, ys, style, marker=".", label=a)
        ax.plot(x, [p["busbw"] for p in pts], "-", color="black", linewidth=2, marker="o", label="vcoll (auto)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([human(v) for v in x], rotation=60, fontsize=7)
        ax.set_title(f"{shape}")
        ax.set_xlabel("bytes per rank")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("busbw (GB/s)")
    axes[0][-1].legend(fontsize=7)
    extra = []
    if data.get("registered"):
        extra.append("registered")
    if data.get("graph"):
        extra.append(f"graphs of {data['graph']}")
    if data.get("tensors", 1) > 1:
        extra.append(f"{data['tensors']} tensors")
    fig.suptitle(f"{data['collective']}: {data['nranks']} x {data['device']}, NCCL {data['nccl']}, "
                 f"{data['type']} {data['op']}" + (f" ({', '.join(extra)})" if extra else ""))
    fig.tight_layout()
    out = os.path.join(outdir, os.path.splitext(os.path.basename(path))[0] + ".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    miss = [p for p in points if p["best_us"] > 0 and p["time_us"] > 1.05 * p["best_us"]]
    mid = [p["speedup_baseline"] for p in points
           if 256 << 10 <= p["bytes_per_rank"] <= 16 << 20 and p["speedup_baseline"] > 0]
    print(f"{out}: {len(points)} points, auto > 5% slower than fastest at {len(miss)}"
          + (f"; mean speedup over {data.get('baseline')} at 256K-16M: {sum(mid) / len(mid):.2f}" if mid else ""))
    for p in miss:
        print(f"   miss {p['shape']:7s} {human(p['bytes_per_rank']):>6s}: auto {p['auto']} {p['time_us']:.1f} us, "
              f"fastest {p['best']} {p['best_us']:.1f} us ({p['time_us'] / p['best_us']:.2f}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for path in args.json:
        plot(path, args.out)


if __name__ == "__main__":
    main()
