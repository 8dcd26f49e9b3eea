#!/usr/bin/env python3
"""plot_scaling.py -- a PNG of cpattn-bench results: time and TF/s per GPU, forward and
backward, against the GPU count and against the sequence length.

    python3 launch/plot_scaling.py results/run.jsonl [more.jsonl ...] [-o out.png]
        [--filter schedule=ring --filter mask=causal] [--title "..."]

Input: the lines `cpattn-bench --json` prints, one JSON object per line, from any number
of files (other lines, e.g. launcher noise, are skipped). Runs that differ only in the
GPU count (or only in the sequence length) make one line of the plot; the legend names
what differs between lines, the title what they all share. A panel whose axis has a
single value in the data (say every run used 2 GPUs) is left out, and the title says so.
Repeated runs of one configuration are reduced to their median. The TF/s come from the
JSON as printed (two decimals), so they are only meaningful for GPU runs.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict

# What identifies a configuration, apart from the two axes (world, seq).
CONFIG_KEYS = ("device", "executor", "schedule", "a2a_group", "mask", "window", "layout", "dtype", "batch",
               "heads", "kv_heads", "head_dim", "head_dim_v")


def load(paths):
    runs, skipped = [], 0
    for path in paths:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
        with stream:
            for line in stream:
                line = line.strip()
                if not line.startswith("{"):
                    skipped += bool(line)
                    continue
                try:
                    run = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if run.get("bench") == "cpattn" and run.get("fwd_ms", 0) > 0:
                    runs.append(run)
    if skipped:
        print(f"plot_scaling: skipped {skipped} line(s) that are not cpattn-bench JSON", file=sys.stderr)
    return runs


MERGED = set()  # keys left out of a configuration's identity (--merge)


def config_of(run):
    # The device string carries library versions too ("NVIDIA H200, cuDNN 91900, NCCL
    # 22803"); runs on the same GPU with another cuDNN still belong to one line.
    return tuple((k, json.dumps(run.get(k)) if k != "device" else run.get(k, "").split(",")[0])
                 for k in CONFIG_KEYS if k not in MERGED)


def describe(items):
    """Short words for a set of (key, value) config items."""
    d = {k: (json.loads(v) if k != "device" else v) for k, v in items}
    words = []
    if "device" in d:
        words.append(d["device"])
    if "executor" in d:
        words.append(f"{d['executor']} executor")
    if "schedule" in d:
        words.append(d["schedule"] + (f" (groups of {d['a2a_group']})" if d.get("a2a_group") else ""))
    if "mask" in d:
        win = d.get("window") or [-1, -1]
        words.append(d["mask"] + (f" {win[0]},{win[1]}" if d["mask"] == "window" else ""))
    elif "window" in d and d["window"] != [-1, -1]:
        words.append(f"window {d['window'][0]},{d['window'][1]}")
    if "layout" in d:
        words.append(d["layout"].upper())
    if d.get("layout") == "thd" and "batch" in d:  # THD's batch is the count of packed documents
        words[-1] += f" ({d.pop('batch')} documents)"
    if "dtype" in d:
        words.append(d["dtype"])
    if "batch" in d:
        words.append(f"batch {d['batch']}")
    if "heads" in d and "kv_heads" in d:
        words.append(f"heads {d['heads']}/{d['kv_heads']} (Q/KV)")
    elif "heads" in d:
        words.append(f"{d['heads']} query heads")
    elif "kv_heads" in d:
        words.append(f"{d['kv_heads']} KV heads")
    if "head_dim" in d:
        words.append(f"d={d['head_dim']}")
    if "head_dim_v" in d and d.get("head_dim_v") != d.get("head_dim"):
        words.append(f"d_v={d['head_dim_v']}")
    return ", ".join(words)


def tokens(n):
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def series(runs, axis):
    """{(config, other-axis value): {axis value: median of each measure}}."""
    other = "seq" if axis == "world" else "world"
    raw = defaultdict(lambda: defaultdict(list))
    for r in runs:
        raw[(config_of(r), r[other])][r[axis]].append(r)
    out = {}
    for key, points in raw.items():
        out[key] = {x: {m: statistics.median(r[m] for r in rs)
                        for m in ("fwd_ms", "bwd_ms", "fwd_tflops_per_rank", "bwd_tflops_per_rank")}
                    for x, rs in points.items()}
    return out


def draw_row(axes, runs, axis, labels, colors):
    import matplotlib.ticker as mt
    from matplotlib.lines import Line2D

    ax_t, ax_f = axes
    other_axis = "seq" if axis == "world" else "world"
    several_other = len({r[other_axis] for r in runs}) > 1
    handles = []
    for key, points in sorted(series(runs, axis).items(), key=lambda kv: (labels[kv[0]], kv[0][1])):
        xs = sorted(points)
        other = key[1]
        label = labels[key]
        if several_other:
            where = f"{tokens(other)} tokens" if axis == "world" else f"{other} GPU(s)"
            label = where if label == "all runs" else f"{label}, {where}"
        color = colors[key]
        handles.append(Line2D([], [], color=color, marker="o", label=label))
        for which, style, marker in (("fwd", "-", "o"), ("bwd", "--", "s")):
            ys = [points[x][f"{which}_ms"] for x in xs]
            ax_t.plot(xs, ys, style, marker=marker, color=color)
            ax_f.plot(xs, [points[x][f"{which}_tflops_per_rank"] for x in xs], style, marker=marker, color=color)
            if axis == "world" and len(xs) > 1:  # perfect strong scaling from the first point
                ax_t.plot(xs, [ys[0] * xs[0] / x for x in xs], ":", color=color, alpha=0.5, linewidth=1)
    handles += [Line2D([], [], color="black", linestyle="-", marker="o", label="forward"),
                Line2D([], [], color="black", linestyle="--", marker="s", label="backward")]
    xs_all = sorted({r[axis] for r in runs})
    if axis == "world" and len(xs_all) > 1:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="ideal: time \u221d 1/GPUs"))
    if axis == "seq" and len(xs_all) > 1:  # attention costs grow as S^2: a guide for the eye
        lo = min(r["fwd_ms"] for r in runs if r["seq"] == xs_all[0])
        ax_t.plot(xs_all, [lo * (x / xs_all[0]) ** 2 for x in xs_all], ":", color="grey", linewidth=1)
        handles.append(Line2D([], [], color="grey", linestyle=":", label="slope of S\u00b2 (guide)"))
    # The TF/s panel starts at 0 and the curves sit high: its lower part holds the legend.
    ax_f.legend(handles=handles, fontsize=8, loc="lower center", framealpha=0.9,
                ncol=2 if len(handles) > 8 else 1)
    name = "GPUs (ranks)" if axis == "world" else "sequence length (tokens)"
    for ax in (ax_t, ax_f):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.xaxis.set_major_formatter(mt.FuncFormatter(
            lambda v, _: str(int(v)) if axis == "world" else tokens(int(v))))
        ax.xaxis.set_minor_locator(mt.NullLocator())
        ax.set_xlabel(name)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time per call (ms, slowest rank)")
    ax_t.set_title(f"time against {'GPU count' if axis == 'world' else 'sequence length'}")
    ax_f.set_ylim(bottom=0)
    ax_f.set_ylabel("TFLOP/s per GPU")
    ax_f.set_title(f"TFLOP/s per GPU against {'GPU count' if axis == 'world' else 'sequence length'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="cpattn-bench --json output files ('-' = stdin)")
    ap.add_argument("-o", "--output", help="PNG to write (default: the first input with .png)")
    ap.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="keep runs whose JSON field KEY equals VALUE (repeatable)")
    ap.add_argument("--merge", action="append", default=[], metavar="KEY",
                    help="runs that differ in KEY still make one line, e.g. --merge schedule for a "
                         "sweep that uses ring on one node and hybrid across nodes (repeatable)")
    ap.add_argument("--title", help="title line above the generated one")
    args = ap.parse_args()
    MERGED.update(args.merge)
    if "schedule" in MERGED:
        MERGED.add("a2a_group")

    runs = load(args.inputs)
    for f in args.filter:
        key, _, value = f.partition("=")
        runs = [r for r in runs if str(r.get(key)).lower() == value.lower()]
    if not runs:
        sys.exit("plot_scaling: no cpattn-bench runs in the input (after filters)")
    out = args.output or (args.inputs[0].rsplit(".", 1)[0] + ".png" if args.inputs[0] != "-" else None)
    if not out:
        sys.exit("plot_scaling: give -o when reading stdin")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Words shared by every configuration go to the title; the rest label the lines.
    configs = sorted({config_of(r) for r in runs})
    common = [item for item in configs[0] if all(item in c for c in configs)]
    labels_cfg = {c: describe([i for i in c if i not in common]) or "all runs" for c in configs}
    palette = plt.get_cmap("tab10").colors
    color_cfg = {c: palette[i % len(palette)] for i, c in enumerate(configs)}

    rows = [a for a in ("world", "seq") if len({r[a] for r in runs}) > 1]
    notes = []
    worlds = sorted({r["world"] for r in runs})
    if "world" not in rows:
        notes.append(f"every run on {worlds[0]} GPU(s): no GPU-count axis")
    if "seq" not in rows:
        notes.append(f"one sequence length ({tokens(runs[0]['seq'])}): no sequence axis")
    if not rows:  # one point per configuration: still show it, against the GPU count
        rows = ["world"]

    fig, axes = plt.subplots(len(rows), 2, figsize=(15, 5.2 * len(rows) + 1.0), squeeze=False)
    for row, axis in zip(axes, rows):
        other = "seq" if axis == "world" else "world"
        # A line per (configuration, value of the other axis); its colour per configuration
        # when the other axis has one value, else per line.
        keys = sorted({(config_of(r), r[other]) for r in runs})
        per_line = len({k[1] for k in keys}) > 1
        labels = {k: labels_cfg[k[0]] for k in keys}
        colors = {k: (palette[i % len(palette)] if per_line else color_cfg[k[0]]) for i, k in enumerate(keys)}
        draw_row(row, runs, axis, labels, colors)

    title = describe(common) or "cpattn-bench"
    heading = (args.title + "\n" if args.title else "") + f"cpattn-bench: {title}"
    if notes:
        heading += "\n(" + "; ".join(notes) + ")"
    fig.suptitle(heading, fontsize=11)
    fig.text(0.5, 0.005, "time: the slowest rank's median per call; TFLOP/s per GPU counts only the "
             "unmasked work (causal: half)", ha="center", fontsize=8, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(out, dpi=110)
    print(f"plot_scaling: {len(runs)} run(s) -> {out}")


if __name__ == "__main__":
    main()
