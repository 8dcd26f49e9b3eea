/*
 * test_cudnn_graphs.c -- every cuDNN SDPA graph variant of kernels/cudnn_sdpa.c builds and
 * finalizes, without a GPU (cuDNN >= 9.8 finalizes operation graphs device-less), and bad
 * keys are refused with a message that names the field.
 *
 * This runs in CI, which has no GPU. It links libcudnn directly, so a machine where the
 * library cannot be loaded fails the test (the loader refuses to start it, or the first
 * test below fails); it never skips. What it cannot check without a GPU is that cuDNN has
 * an engine for each graph: tests/gpu/test_cudnn_sdpa.c does that.
 *
 * CPATTN_TEST_VERBOSE=1 prints one line per variant.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cudnn_sdpa.h"

/* ---------------------------------------------------------------------------------- */
/* Layouts: element strides in logical (b, h, s, d) order                              */
/* ---------------------------------------------------------------------------------- */

enum { LAYOUT_BSHD = 0, LAYOUT_SBHD = 1, LAYOUT_BHSD = 2, LAYOUT_COUNT = 3 };
static const char *const kLayoutNames[LAYOUT_COUNT] = {"bshd", "sbhd", "bhsd"};

static cpaSdpaLayout layoutOf(int kind, int64_t b, int64_t h, int64_t s, int64_t d) {
  cpaSdpaLayout l;
  switch (kind) {
    case LAYOUT_SBHD: l.stride[0] = h * d; l.stride[1] = d; l.stride[2] = b * h * d; break;
    case LAYOUT_BHSD: l.stride[0] = h * s * d; l.stride[1] = s * d; l.stride[2] = d; break;
    default: l.stride[0] = s * h * d; l.stride[1] = d; l.stride[2] = h * d; break;
  }
  l.stride[3] = 1;
  return l;
}

typedef struct {
  int backward, io, ragged, mask, lo, hi, deterministic;
  int64_t hq, hkv, d;
  int layout;     /* activations (q, k, v, o)                                           */
  int gradLayout; /* gradients (dout, dq, dk, dv): differs from layout on purpose        */
} Variant;

static cpaSdpaKey makeKey(const Variant *v) {
  cpaSdpaKey k;
  memset(&k, 0, sizeof k);
  k.backward = v->backward;
  k.io = v->io;
  k.b = 3;
  k.h_q = v->hq;
  k.h_kv = v->hkv;
  k.s_q = 200; /* deliberately not a multiple of 64 or 128 */
  k.s_kv = 257;
  k.d_qk = v->d;
  k.d_v = v->d;
  /* Ragged (THD) tensors are token-major: token stride h * d (the batch stride is not
   * used by cuDNN, the offsets place the sequences). */
  int lay = v->ragged ? LAYOUT_BSHD : v->layout;
  int glay = v->ragged ? LAYOUT_BSHD : v->gradLayout;
  k.q = layoutOf(lay, k.b, k.h_q, k.s_q, k.d_qk);
  k.o = layoutOf(lay, k.b, k.h_q, k.s_q, k.d_v);
  k.k = layoutOf(lay, k.b, k.h_kv, k.s_kv, k.d_qk);
  k.v = layoutOf(lay, k.b, k.h_kv, k.s_kv, k.d_v);
  if (v->backward) {
    k.dout = layoutOf(glay, k.b, k.h_q, k.s_q, k.d_v);
    k.dq = layoutOf(glay, k.b, k.h_q, k.s_q, k.d_qk);
    k.dk = layoutOf(glay, k.b, k.h_kv, k.s_kv, k.d_qk);
    k.dv = layoutOf(glay, k.b, k.h_kv, k.s_kv, k.d_v);
    if (v->ragged) { /* ragged gradients with padded token strides: still their own */
      k.dq.stride[2] += 8;
      k.dk.stride[2] += 16;
    }
    k.deterministic = v->deterministic;
  }
  k.ragged = v->ragged;
  k.mask = v->mask;
  k.band_has_lo = v->lo;
  k.band_has_hi = v->hi;
  return k;
}

static void describeVariant(const Variant *v, char *buf, size_t len) {
  const char *mask = v->mask == CPA_SDPA_MASK_NONE     ? "none"
                     : v->mask == CPA_SDPA_MASK_CAUSAL ? "causal"
                     : (v->lo && v->hi)                ? "band(lo,hi)"
                     : v->lo                           ? "band(lo)"
                                                       : "band(hi)";
  const char *heads = v->hq == v->hkv ? "mha" : (v->hkv == 1 ? "mqa" : "gqa");
  snprintf(buf, len, "%s %s %-11s %s %s d=%lld %s%s", v->backward ? "bwd" : "fwd", v->io == cpattnFloat16 ? "fp16" : "bf16",
           mask, v->ragged ? "thd " : kLayoutNames[v->layout], heads, (long long)v->d,
           v->backward && v->gradLayout != v->layout && !v->ragged ? "grads-" : "",
           v->backward && v->gradLayout != v->layout && !v->ragged ? kLayoutNames[v->gradLayout] : "");
  if (v->backward && v->deterministic) strncat(buf, " deterministic", len - strlen(buf) - 1);
}

/* ---------------------------------------------------------------------------------- */
/* Tests                                                                               */
/* ---------------------------------------------------------------------------------- */

/* cuDNN is present, new enough for device-less graph building, and its sub-libraries
 * load (creating a backend descriptor goes through libcudnn_graph). */
static void test_cudnn_loads(void **state) {
  (void)state;
  size_t v = cudnnGetVersion();
  printf("cuDNN runtime %zu, headers %d\n", v, CUDNN_VERSION);
  if (v < 90800) fail_msg("cuDNN runtime %zu is older than 9.8: graphs cannot be built without a GPU", v);
  cudnnBackendDescriptor_t d = NULL;
  cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, &d);
  if (st != CUDNN_STATUS_SUCCESS) {
    char msg[512];
    cudnnGetLastErrorString(msg, sizeof msg);
    fail_msg("cudnnBackendCreateDescriptor failed: %s (%d): %s", cudnnGetErrorString(st), (int)st, msg);
  }
  cudnnBackendDestroyDescriptor(d);
  assert_int_equal(cpaSdpaCheckVersion(0), cpattnSuccess);
}

static void test_all_variants(void **state) {
  (void)state;
  static const int masks[5][3] = {/* mask, lo, hi */
                                  {CPA_SDPA_MASK_NONE, 0, 0},
                                  {CPA_SDPA_MASK_CAUSAL, 0, 0},
                                  {CPA_SDPA_MASK_BAND, 1, 0},
                                  {CPA_SDPA_MASK_BAND, 0, 1},
                                  {CPA_SDPA_MASK_BAND, 1, 1}};
  static const int64_t heads[3][2] = {{8, 8}, {8, 2}, {8, 1}}; /* MHA, GQA 4:1, MQA */
  static const int64_t dims[3] = {64, 128, 256};
  static const int ios[2] = {cpattnBFloat16, cpattnFloat16};
  const char *verbose = getenv("CPATTN_TEST_VERBOSE");
  int total = 0, failed = 0, rotation = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int bwd = 0; bwd < 2; ++bwd)
    for (int m = 0; m < 5; ++m)
      for (int ragged = 0; ragged < 2; ++ragged)
        for (int hi = 0; hi < 3; ++hi)
          for (int di = 0; di < 3; ++di)
            for (int ii = 0; ii < 2; ++ii)
              for (int det = 0; det <= bwd; ++det) {
                Variant v;
                memset(&v, 0, sizeof v);
                v.backward = bwd;
                v.io = ios[ii];
                v.ragged = ragged;
                v.mask = masks[m][0];
                v.lo = masks[m][1];
                v.hi = masks[m][2];
                v.deterministic = det;
                v.hq = heads[hi][0];
                v.hkv = heads[hi][1];
                v.d = dims[di];
                /* Every activation layout and every gradient layout is met, rotated
                 * over the variants rather than multiplied in. */
                v.layout = rotation % LAYOUT_COUNT;
                v.gradLayout = (rotation / LAYOUT_COUNT) % LAYOUT_COUNT;
                ++rotation;
                cpaSdpaKey key = makeKey(&v);
                char name[160];
                describeVariant(&v, name, sizeof name);
                cpattnResult_t res = cpaSdpaCheckGraph(&key);
                ++total;
                if (res != cpattnSuccess) {
                  ++failed;
                  printf("FAILED   %s: %s: %s\n", name, cpattnGetErrorString(res), cpattnGetLastError());
                } else if (verbose && verbose[0] == '1') {
                  printf("finalized %s\n", name);
                }
              }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("%d of %d graph variants finalized (%.2f s)\n", total - failed, total,
         (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
  assert_int_equal(failed, 0);
}

/* A correct key, then one field broken at a time: each must come back as
 * cpattnInvalidArgument with a message that names the field. */
typedef struct {
  const char *field; /* what the message must contain */
  void (*breakIt)(cpaSdpaKey *k);
} BadKey;

static void badBackward(cpaSdpaKey *k) { k->backward = 2; }
static void badIo(cpaSdpaKey *k) { k->io = cpattnFloat32; }
static void badB(cpaSdpaKey *k) { k->b = 0; }
static void badHq(cpaSdpaKey *k) { k->h_q = 0; }
static void badHkv(cpaSdpaKey *k) { k->h_kv = 0; }
static void badGroup(cpaSdpaKey *k) { k->h_kv = 3; }
static void badSq(cpaSdpaKey *k) { k->s_q = 0; }
static void badSkv(cpaSdpaKey *k) { k->s_kv = -5; }
static void badDqkOdd(cpaSdpaKey *k) { k->d_qk = 60; }
static void badDqkBig(cpaSdpaKey *k) { k->d_qk = 264; }
static void badDv(cpaSdpaKey *k) { k->d_v = 0; }
static void badQStride(cpaSdpaKey *k) { k->q.stride[3] = 2; }
static void badKStride(cpaSdpaKey *k) { k->k.stride[3] = 0; }
static void badVStride(cpaSdpaKey *k) { k->v.stride[1] = -1; }
static void badOStride(cpaSdpaKey *k) { k->o.stride[3] = 3; }
static void badDoutStride(cpaSdpaKey *k) { k->dout.stride[3] = 0; }
static void badDqStride(cpaSdpaKey *k) { k->dq.stride[3] = 2; }
static void badDkStride(cpaSdpaKey *k) { k->dk.stride[3] = 2; }
static void badDvStride(cpaSdpaKey *k) { k->dv.stride[3] = 2; }
static void badMask(cpaSdpaKey *k) { k->mask = 7; }
static void badBand(cpaSdpaKey *k) {
  k->mask = CPA_SDPA_MASK_BAND;
  k->band_has_lo = 0;
  k->band_has_hi = 0;
}
static void badBandFlag(cpaSdpaKey *k) {
  k->mask = CPA_SDPA_MASK_BAND;
  k->band_has_lo = 5;
}
static void badRagged(cpaSdpaKey *k) { k->ragged = 2; }
static void badDeterministic(cpaSdpaKey *k) { k->deterministic = -1; }

static void test_invalid_keys(void **state) {
  (void)state;
  static const BadKey bad[] = {
      {"key->backward", badBackward}, {"key->io", badIo},          {"key->b", badB},
      {"key->h_q", badHq},           {"key->h_kv", badHkv},        {"key->h_kv", badGroup},
      {"key->s_q", badSq},           {"key->s_kv", badSkv},        {"key->d_qk", badDqkOdd},
      {"key->d_qk", badDqkBig},      {"key->d_v", badDv},          {"key->q.stride[3]", badQStride},
      {"key->k.stride[3]", badKStride}, {"key->v.stride[1]", badVStride}, {"key->o.stride[3]", badOStride},
      {"key->dout.stride[3]", badDoutStride}, {"key->dq.stride[3]", badDqStride},
      {"key->dk.stride[3]", badDkStride}, {"key->dv.stride[3]", badDvStride}, {"key->mask", badMask},
      {"key->band_has_lo", badBand},  {"key->band_has_lo", badBandFlag}, {"key->ragged", badRagged},
      {"key->deterministic", badDeterministic},
  };
  Variant v;
  memset(&v, 0, sizeof v);
  v.backward = 1;
  v.io = cpattnBFloat16;
  v.mask = CPA_SDPA_MASK_CAUSAL;
  v.hq = 8;
  v.hkv = 2;
  v.d = 128;
  const cpaSdpaKey good = makeKey(&v);
  assert_int_equal(cpaSdpaCheckGraph(&good), cpattnSuccess);

  assert_int_equal(cpaSdpaCheckGraph(NULL), cpattnInvalidArgument);
  assert_non_null(strstr(cpattnGetLastError(), "key"));

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    cpaSdpaKey k = good;
    bad[i].breakIt(&k);
    cpattnResult_t res = cpaSdpaCheckGraph(&k);
    const char *msg = cpattnGetLastError();
    if (res != cpattnInvalidArgument || strstr(msg, bad[i].field) == NULL)
      fail_msg("breaking %s: got %s, message \"%s\"", bad[i].field, cpattnGetErrorString(res), msg);
    printf("refused (%s): %s\n", bad[i].field, msg);
  }
}

/* Valid keys that cuDNN cannot run come back as cpattnNotSupported, so that a caller can
 * fall back. */
static void test_not_supported(void **state) {
  (void)state;
  Variant v;
  memset(&v, 0, sizeof v);
  v.backward = 1;
  v.io = cpattnBFloat16;
  v.hq = 4;
  v.hkv = 4;
  v.d = 64;
  cpaSdpaKey k = makeKey(&v);
  k.s_q = k.s_kv = 1;
  assert_int_equal(cpaSdpaCheckGraph(&k), cpattnNotSupported);
  printf("not supported: %s\n", cpattnGetLastError());
  k = makeKey(&v);
  k.d_qk = 256;
  k.d_v = 128;
  assert_int_equal(cpaSdpaCheckGraph(&k), cpattnNotSupported);
  printf("not supported: %s\n", cpattnGetLastError());
  /* The forward has no such restriction. */
  v.backward = 0;
  k = makeKey(&v);
  k.d_qk = 256;
  k.d_v = 128;
  assert_int_equal(cpaSdpaCheckGraph(&k), cpattnSuccess);
}

/* The parts of the cache API that need no GPU: argument checks. */
static void test_api_arguments(void **state) {
  (void)state;
  cpaSdpaCache *cache = (cpaSdpaCache *)(uintptr_t)1;
  assert_int_equal(cpaSdpaCacheCreate(&cache, NULL), cpattnInvalidArgument);
  assert_null(cache);
  assert_non_null(strstr(cpattnGetLastError(), "handle"));
  assert_int_equal(cpaSdpaCacheCreate(NULL, NULL), cpattnInvalidArgument);
  const cpaSdpaPlan *plan = NULL;
  assert_int_equal(cpaSdpaCacheGet(NULL, NULL, &plan), cpattnInvalidArgument);
  assert_int_equal(cpaSdpaRun(NULL, NULL, NULL, NULL), cpattnInvalidArgument);
  assert_int_equal(cpaSdpaPlanWorkspaceSize(NULL), 0);
  char buf[32];
  cpaSdpaPlanDescribe(NULL, buf, sizeof buf);
  assert_string_equal(buf, "(no plan)");
  cpaSdpaCacheDestroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cudnn_loads),   cmocka_unit_test(test_all_variants),
      cmocka_unit_test(test_invalid_keys),  cmocka_unit_test(test_not_supported),
      cmocka_unit_test(test_api_arguments),
  };
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* The refusals below are expected: keep the library's WARN log of each one quiet
   * unless the caller asked for a level. */
  setenv("CPATTN_DEBUG", "NONE", 0);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
