/*
 * fuzz_input.h -- turns the fuzzer's bytes into numbers, for the fuzz targets here.
 *
 * Most draws land in a small, useful range (so that valid configs are common and the
 * deep code gets exercised), and about one in sixteen is an edge value (0, -1, INT_MAX,
 * ...) that a range would rarely hit. Bytes past the end read as 0, so every input,
 * however short, means something; and a short input means the plain, small case.
 */
#ifndef CPATTN_TESTS_FUZZ_INPUT_H_
#define CPATTN_TESTS_FUZZ_INPUT_H_

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Stops the run at a broken invariant. A trap, not assert(): it fires in every build
 * mode, and libFuzzer saves the input that caused it. */
#define FUZZ_CHECK(cond)              \
  do {                                \
    if (!(cond)) __builtin_trap();    \
  } while (0)

typedef struct {
  const uint8_t *p;
  size_t n;
} FuzzIn;

static inline uint8_t fz_byte(FuzzIn *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static inline uint32_t fz_u32(FuzzIn *in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | fz_byte(in);
  return v;
}

/* Mostly lo..hi; byte values 240..255 select an edge value instead. */
static inline int fz_int(FuzzIn *in, int lo, int hi) {
  static const int edges[16] = {INT_MIN, INT_MIN + 1, -1000, -2, -1, 0, 1, 2,
                                255, 256, 1 << 16, 1 << 30, INT_MAX / 2, INT_MAX / 2 + 1, INT_MAX - 1, INT_MAX};
  uint8_t b = fz_byte(in);
  if (b >= 240) return edges[b - 240];
  return lo + (int)(b % (unsigned)(hi - lo + 1));
}

/* An enum field: mostly a valid value, sometimes one just outside, sometimes far off. */
static inline int fz_enum(FuzzIn *in, int count) {
  uint8_t b = fz_byte(in);
  if (b >= 248) return b == 255 ? INT_MIN : b == 254 ? INT_MAX : b == 253 ? -1 : count + (b - 248);
  return b % count;
}

#endif /* CPATTN_TESTS_FUZZ_INPUT_H_ */
