#!/bin/sh
# make_corpus.sh -- writes the committed seed corpora of the fuzz targets:
#   tests/fuzz/corpus/fuzz_config/*, tests/fuzz/corpus/fuzz_schedule/*
# Each seed is a hand-made input whose bytes are spelled out below, field by field, in
# the order the target reads them (see make_case in fuzz_config.c and
# LLVMFuzzerTestOneInput in fuzz_schedule.c). Seeds named regress-* are inputs that once
# broke something; they stay, so that every fuzz run replays them first.
# Run from anywhere; rewrites the files (the output is deterministic).
set -eu
here=$(cd "$(dirname "$0")" && pwd)

# bytes HEX... : the given bytes, in octal escapes (portable printf has no \x).
bytes() {
  for h in "$@"; do
    # shellcheck disable=SC2059
    printf "\\$(printf '%03o' "0x$h")"
  done
}

c="$here/corpus/fuzz_config"
s="$here/corpus/fuzz_schedule"
mkdir -p "$c" "$s"

# ---- fuzz_config: hdr layout dtype exec batch kv qmul dqk dqk8 dvflag [dv] seqhi seqlo
#      [THD: cu... seqflag] mask [maskbyte] scale sched [a2abyte] bal det timeout world
#      rank heads dim corrupt
# BSHD fp32 causal ring zigzag; batch 2, heads 4/2, d 8, S 97; P 4, rank 2.
bytes 00 00 00 01 01 01 01 07 00 00 00 60 01 00 00 01 00 01 00 01 03 02 01 03 00 >"$c/bshd_causal_ring_p4"
# THD bf16, 4 sequences of 20, 0, 7, 41 tokens; heads 4/1, d 16, dv 8; window (5, 2);
# all-gather; P 3, rank 1; then the local descriptor's heads spoiled (corrupt 3).
bytes 00 02 01 01 03 00 03 0f 00 01 08 00 0a 01 14 03 07 29 01 02 06 03 00 03 00 00 00 00 02 01 02 01 03 \
  >"$c/thd_window_allgather_p3"
# SBHD bf16, batch 3, heads 8/2, d 64, S 289; no mask, scale 1.0; all-to-all,
# contiguous, deterministic, timeout 100 ms; P 4, rank 3; full's token dim spoiled.
bytes 00 01 01 01 02 01 03 07 01 00 01 20 00 00 40 02 00 02 01 65 03 03 00 00 02 >"$c/sbhd_a2a_p4"
# BSHD fp32 causal, heads 4/4, S 64; hybrid with groups of 2; P 4, rank 0; dtype spoiled.
bytes 00 00 00 01 00 03 00 07 00 00 00 3f 01 00 00 04 02 00 00 00 03 00 01 01 05 >"$c/bshd_hybrid_p4"
# config->size = 8: a caller built against another cpattnConfig_t.
bytes ff 00 00 00 08 >"$c/bad_size"
# Every byte 0xff: edge values everywhere.
bytes ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff \
  >"$c/all_edges"
# Regressions: world size INT_MAX (then INT_MAX - 1 with THD) and a zigzag split made
# cpaProblemInit / chunk_count compute 2 * world in an int (signed overflow, UBSan).
bytes 00 00 00 01 01 01 01 07 00 00 00 60 01 00 00 01 00 01 00 01 ff 02 01 03 00 >"$c/regress-world-int-max"
bytes 00 02 01 01 03 00 03 0f 00 01 08 00 0a 01 14 03 07 29 01 02 06 03 00 01 00 01 00 00 fe 01 02 01 00 \
  >"$c/regress-world-int-max-thd"

# ---- fuzz_schedule: world shape [THD: len...] | [seq] kvidx qmul mask [wl wr] sched
#      [group] balance
# BSHD causal ring zigzag, P 4, S 37, heads 4/2.
bytes 03 00 24 01 01 01 01 01 >"$s/bshd_causal_ring_p4"
# THD, 5 sequences of 13, 0, 30, 1, 22 tokens; heads 3/3; window (7, 1); hybrid P 6 in
# groups of 3; auto balance.
bytes 05 11 0d 04 1e 01 16 02 00 02 08 02 04 02 00 >"$s/thd_window_hybrid_p6"
# SBHD no mask, all-to-all over 8 ranks with 2 KV heads for 8 query heads (replicated).
bytes 07 01 3f 01 03 00 02 02 >"$s/sbhd_a2a_p8_replicated_kv"
# BSHD causal all-gather, P 3, S 7 (one-token chunks), contiguous.
bytes 02 00 06 00 00 01 03 02 >"$s/bshd_causal_allgather_short"
# THD, one sequence of 3 tokens over 5 ranks zigzag: most chunks empty.
bytes 04 02 03 00 00 01 01 01 >"$s/thd_mostly_empty_p5"
