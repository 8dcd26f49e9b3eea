#!/usr/bin/env python3
"""sanitize_verdict.py -- reads compute-sanitizer logs and says whose errors they are.

    python3 launch/sanitize_verdict.py memcheck.log racecheck.log ...

compute-sanitizer reports three kinds of thing on a cpattn run, and only one of them is
ours to fix:
  * errors in cpattn's own kernels (kernels/cuda_ops.cu) or its API calls: must be zero;
  * CUDA API errors raised inside NCCL (it probes its kernels with
    cudaFuncGetAttributes and gets "no kernel image" for the architectures it was not
    built for; NCCL handles that error itself);
  * racecheck hazards inside cuDNN's generated Hopper kernels (cudnn_generated_*) and
    NCCL's send/recv kernel (ncclDevKernel_SendRecv): they order shared memory with TMA,
    mbarrier transactions or flag polling, which racecheck does not model, so it reports
    their pipelined buffers as races. A report whose kernel name the tool could not
    resolve is counted apart (seen once, beside the same cuDNN kernel's report from the
    other rank, with the same hazard count).
Each report is attributed by its kernel name or, for API errors, by the host frames of
its backtrace. Give each rank its own log (compute-sanitizer --log-file): two ranks
writing one file interleave their reports' lines. Prints one line per log and exits 1
if any report is not attributed to NCCL or cuDNN. (Whether the test itself passed is
the caller's to check, from the program's own output.)
"""
import re
import sys


def blocks(lines):
    """Reports: a line starting '========= ' followed by its indented continuation."""
    cur = None
    for line in lines:
        if not line.startswith("========="):
            continue
        body = line[9:]
        if body.strip() == "":
            continue
        body = body[1:] if body.startswith(" ") else body  # '========= ' then the text
        if body.startswith(" ") and cur is not None:  # continuation (indented further)
            cur.append(body)
        else:
            if cur is not None:
                yield cur
            cur = [body]
    if cur is not None:
        yield cur


def owner(block):
    head = block[0]
    text = "\n".join(block)
    if head.startswith("Program hit"):
        return "nccl-api" if "libnccl" in text and "libcpattn" not in text else "ours"
    # Each access names its kernel: "... access at KERNEL+0xOFFSET", or nothing at all
    # when the tool could not resolve the symbol (cpattn's kernels are ordinary,
    # symbol-carrying kernels of libcpattn: they always resolve).
    sites = re.findall(r"access at (\S*)", text) or re.findall(r"at (\S+?)\+0x", text)
    names = [x.split("+0x")[0] for x in sites]
    if names and all(n.startswith("cudnn_generated") for n in names):
        return "cudnn-kernel"
    if names and all(n.startswith("ncclDevKernel") for n in names):
        return "nccl-kernel"
    if names and all(n == "" for n in names):
        return "unnamed"
    return "ours"


def main(paths):
    bad = 0
    for path in paths:
        lines = open(path, errors="replace").read().splitlines()
        counts = {"ours": 0, "nccl-api": 0, "nccl-kernel": 0, "cudnn-kernel": 0, "unnamed": 0}
        examples = []
        for b in blocks(lines):
            head = b[0]
            if head.startswith(("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "Target application")):
                continue
            if not (head.startswith("Program hit") or head.startswith("Error:") or head.startswith("Invalid")
                    or "access" in head or "error" in head.lower()):
                continue
            who = owner(b)
            counts[who] += 1
            if who == "ours" and len(examples) < 5:
                examples.append(" | ".join(x.strip() for x in b[:3]))
        verdict = "clean" if counts["ours"] == 0 else "NOT CLEAN"
        print(f"{path}: {verdict}: cpattn {counts['ours']}, NCCL API probes {counts['nccl-api']}, "
              f"NCCL kernels {counts['nccl-kernel']}, cuDNN generated kernels {counts['cudnn-kernel']}, "
              f"unresolved kernel names {counts['unnamed']}")
        for e in examples:
            print("   ", e[:300])
        bad |= verdict != "clean"
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
