/*
 * test_config.c -- bad input gets a status and a message that names the argument and
 * the rule: config fields, plan-time divisibility rules, tensor descriptors, workspace,
 * call order. Every case checks the status and a substring of cpattnGetLastError().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"
#include "loopback.h"

static int32_t cu_good[4] = {0, 5, 5, 20};
static int32_t cu_bad0[4] = {1, 5, 5, 20};
static int32_t cu_down[4] = {0, 5, 4, 20};

static cpattnConfig_t base_config(void) {
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.dtype = cpattnFloat32;
  c.executor = cpattnExecutorHost;
  c.batch = 2;
  c.numHeadsQ = 4;
  c.numHeadsKV = 2;
  c.headDimQK = 8;
  c.seqLen = 16;
  return c;
}

typedef struct {
  const char *what;
  void (*mutate)(cpattnConfig_t *c);
  cpattnResult_t want;
  const char *needle;
} ConfigCase;

#define MUT(name, body) \
  static void name(cpattnConfig_t *c) { body; }
MUT(m_size, c->size = 8)
MUT(m_version, c->version = 990000)
MUT(m_layout, c->layout = (cpattnLayout_t)7)
MUT(m_dtype, c->dtype = (cpattnDataType_t)9)
MUT(m_batch, c->batch = 0)
MUT(m_hq, c->numHeadsQ = 0)
MUT(m_hkv, c->numHeadsKV = 0)
MUT(m_hdiv, c->numHeadsQ = 8; c->numHeadsKV = 3)
MUT(m_dqk0, c->headDimQK = 0)
MUT(m_dqk_big, c->headDimQK = 300)
MUT(m_dv_neg, c->headDimV = -1)
MUT(m_dv_big, c->headDimV = 257)
MUT(m_seq0, c->seqLen = 0)
MUT(m_seq_huge, c->seqLen = (int64_t)INT32_MAX + 1)
MUT(m_cu_on_bshd, c->cuSeqlens = cu_good)
MUT(m_thd_null, c->layout = cpattnLayoutTHD; c->batch = 3; c->seqLen = 20)
MUT(m_thd_first, c->layout = cpattnLayoutTHD; c->batch = 3; c->seqLen = 20; c->cuSeqlens = cu_bad0)
MUT(m_thd_down, c->layout = cpattnLayoutTHD; c->batch = 3; c->seqLen = 20; c->cuSeqlens = cu_down)
MUT(m_thd_total, c->layout = cpattnLayoutTHD; c->batch = 3; c->seqLen = 21; c->cuSeqlens = cu_good)
MUT(m_mask, c->mask = (cpattnMask_t)5)
MUT(m_wl, c->mask = cpattnMaskSlidingWindow; c->windowLeft = -2; c->windowRight = 0)
MUT(m_wr, c->mask = cpattnMaskSlidingWindow; c->windowLeft = 4; c->windowRight = -3)
MUT(m_window_not_sw, c->mask = cpattnMaskCausal; c->windowLeft = 4)
MUT(m_scale_nan, c->softmaxScale = NAN)
MUT(m_scale_neg, c->softmaxScale = -0.5f)
MUT(m_scale_inf, c->softmaxScale = INFINITY)
MUT(m_sched, c->schedule = (cpattnSchedule_t)9)
MUT(m_hybrid0, c->schedule = cpattnScheduleHybrid; c->a2aGroupSize = 0)
MUT(m_a2a_ring, c->schedule = cpattnScheduleRing; c->a2aGroupSize = 2)
MUT(m_balance, c->balance = (cpattnBalance_t)4)
MUT(m_exec, c->executor = (cpattnExecutor_t)7)
MUT(m_det, c->deterministic = 2)
MUT(m_timeout, c->timeoutMs = -5)
MUT(m_fp16_host, c->dtype = cpattnFloat16)
MUT(m_fp32_cuda, c->executor = cpattnExecutorCuda)

static const ConfigCase kConfigCases[] = {
    {"size", m_size, cpattnInvalidArgument, "config->size"},
    {"version", m_version, cpattnInvalidArgument, "config->version"},
    {"layout", m_layout, cpattnInvalidArgument, "config->layout"},
    {"dtype", m_dtype, cpattnInvalidArgument, "config->dtype"},
    {"batch", m_batch, cpattnInvalidArgument, "config->batch"},
    {"numHeadsQ", m_hq, cpattnInvalidArgument, "config->numHeadsQ"},
    {"numHeadsKV", m_hkv, cpattnInvalidArgument, "config->numHeadsKV"},
    {"heads divide", m_hdiv, cpattnInvalidArgument, "must divide config->numHeadsQ"},
    {"headDimQK 0", m_dqk0, cpattnInvalidArgument, "config->headDimQK"},
    {"headDimQK 300", m_dqk_big, cpattnInvalidArgument, "config->headDimQK"},
    {"headDimV -1", m_dv_neg, cpattnInvalidArgument, "config->headDimV"},
    {"headDimV 257", m_dv_big, cpattnInvalidArgument, "config->headDimV"},
    {"seqLen 0", m_seq0, cpattnInvalidArgument, "config->seqLen"},
    {"seqLen huge", m_seq_huge, cpattnInvalidArgument, "config->seqLen"},
    {"cuSeqlens on BSHD", m_cu_on_bshd, cpattnInvalidArgument, "config->cuSeqlens must be NULL"},
    {"THD without cuSeqlens", m_thd_null, cpattnInvalidArgument, "config->cuSeqlens must not be NULL"},
    {"cuSeqlens[0]", m_thd_first, cpattnInvalidArgument, "config->cuSeqlens[0]"},
    {"cuSeqlens decreasing", m_thd_down, cpattnInvalidArgument, "non-decreasing"},
    {"cuSeqlens total", m_thd_total, cpattnInvalidArgument, "config->seqLen"},
    {"mask", m_mask, cpattnInvalidArgument, "config->mask"},
    {"windowLeft", m_wl, cpattnInvalidArgument, "config->windowLeft"},
    {"windowRight", m_wr, cpattnInvalidArgument, "config->windowRight"},
    {"window without SlidingWindow", m_window_not_sw, cpattnInvalidArgument, "cpattnMaskSlidingWindow"},
    {"scale NaN", m_scale_nan, cpattnInvalidArgument, "config->softmaxScale"},
    {"scale negative", m_scale_neg, cpattnInvalidArgument, "config->softmaxScale"},
    {"scale inf", m_scale_inf, cpattnInvalidArgument, "config->softmaxScale"},
    {"schedule", m_sched, cpattnInvalidArgument, "config->schedule"},
    {"hybrid group 0", m_hybrid0, cpattnInvalidArgument, "config->a2aGroupSize"},
    {"group size on ring", m_a2a_ring, cpattnInvalidArgument, "config->a2aGroupSize"},
    {"balance", m_balance, cpattnInvalidArgument, "config->balance"},
    {"executor", m_exec, cpattnInvalidArgument, "config->executor"},
    {"deterministic", m_det, cpattnInvalidArgument, "config->deterministic"},
    {"timeoutMs", m_timeout, cpattnInvalidArgument, "config->timeoutMs"},
    {"fp16 on host", m_fp16_host, cpattnNotSupported, "config->dtype = fp16"},
    {"fp32 on cuda", m_fp32_cuda, cpattnNotSupported, "config->dtype = fp32"},
};

static void expect(cpattnResult_t got, cpattnResult_t want, const char *needle, const char *what) {
  const char *msg = cpattnGetLastError();
  if (got != want || !strstr(msg, needle)) {
    print_error("case '%s': got %s, message \"%s\"; want %s with \"%s\"\n", what, cpattnGetErrorString(got), msg,
                cpattnGetErrorString(want), needle);
    fail();
  }
}

static void test_each_bad_config_field_is_named(void **state) {
  (void)state;
  cpattnConfig_t good = base_config();
  assert_int_equal(cpattnConfigValidate(&good), cpattnSuccess);
  assert_string_equal(cpattnGetLastError(), "");
  expect(cpattnConfigValidate(NULL), cpattnInvalidArgument, "config must not be NULL", "NULL config");
  for (size_t i = 0; i < sizeof kConfigCases / sizeof kConfigCases[0]; ++i) {
    cpattnConfig_t c = base_config();
    kConfigCases[i].mutate(&c);
    expect(cpattnConfigValidate(&c), kConfigCases[i].want, kConfigCases[i].needle, kConfigCases[i].what);
  }
}

/* Rules that need the world size, through the helpers that take one. */
static void test_world_size_rules_are_named(void **state) {
  (void)state;
  int64_t n;
  cpattnConfig_t c = base_config();
  c.schedule = cpattnScheduleAllToAll;
  c.numHeadsQ = 6;
  c.numHeadsKV = 6;
  expect(cpattnGetLocalTokenCount(&c, 0, 4, &n), cpattnNotSupported, "config->numHeadsQ = 6", "a2a heads q");
  c.numHeadsQ = 12;
  c.numHeadsKV = 3;
  expect(cpattnGetLocalTokenCount(&c, 0, 4, &n), cpattnNotSupported, "config->numHeadsKV = 3", "a2a heads kv");
  c.numHeadsKV = 2; /* replicated: 4 % 2 == 0 */
  assert_int_equal(cpattnGetLocalTokenCount(&c, 0, 4, &n), cpattnSuccess);
  c = base_config();
  c.schedule = cpattnScheduleHybrid;
  c.a2aGroupSize = 3;
  expect(cpattnGetLocalTokenCount(&c, 0, 4, &n), cpattnInvalidArgument, "config->a2aGroupSize = 3", "hybrid");
  c = base_config();
  c.mask = cpattnMaskCausal;
  c.seqLen = 5;
  expect(cpattnGetLocalTokenCount(&c, 0, 4, &n), cpattnInvalidArgument, "config->seqLen = 5", "short zigzag");
  c = base_config();
  expect(cpattnGetLocalTokenCount(&c, 4, 4, &n), cpattnInvalidArgument, "rank = 4", "rank range");
  expect(cpattnGetLocalTokenCount(&c, 0, 0, &n), cpattnInvalidArgument, "worldSize = 0", "world 0");
  expect(cpattnGetLocalTokenCount(&c, 0, 1, NULL), cpattnInvalidArgument, "count must not be NULL", "count NULL");
}

/* A plan on one rank, with its tensors, for the descriptor cases. */
typedef struct {
  cpattnComm_t comm;
  cpattnPlan_t plan;
  float *q, *k, *v, *o, *dout, *dq, *dk, *dv, *lse;
  cpattnTensor_t tq, tk, tv, to, tdo, tdq, tdk, tdv;
  void *ws, *ws_raw;
  size_t ws_bytes;
} Fixture;

static int fixture_setup(void **state) {
  Fixture *f = calloc(1, sizeof *f);
  cpattnConfig_t c = base_config();
  if (loopback_comm(&f->comm) != cpattnSuccess) return -1;
  if (cpattnPlanCreate(&f->plan, f->comm, &c) != cpattnSuccess) return -1;
  size_t nq = 2 * 16 * 4 * 8, nk = 2 * 16 * 2 * 8;
  float **bufs[8] = {&f->q, &f->k, &f->v, &f->o, &f->dout, &f->dq, &f->dk, &f->dv};
  size_t sizes[8] = {nq, nk, nk, nq, nq, nq, nk, nk};
  for (int i = 0; i < 8; ++i) {
    *bufs[i] = malloc(sizes[i] * sizeof(float));
    for (size_t j = 0; j < sizes[i]; ++j) (*bufs[i])[j] = (float)((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
  }
  f->lse = malloc(2 * 4 * 16 * sizeof(float));
  cpattnTensorInit(&f->tq, f->q, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 4, 8);
  cpattnTensorInit(&f->tk, f->k, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 2, 8);
  cpattnTensorInit(&f->tv, f->v, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 2, 8);
  cpattnTensorInit(&f->to, f->o, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 4, 8);
  cpattnTensorInit(&f->tdo, f->dout, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 4, 8);
  cpattnTensorInit(&f->tdq, f->dq, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 4, 8);
  cpattnTensorInit(&f->tdk, f->dk, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 2, 8);
  cpattnTensorInit(&f->tdv, f->dv, cpattnFloat32, cpattnLayoutBSHD, 2, 16, 2, 8);
  cpattnPlanGetWorkspaceSize(f->plan, &f->ws_bytes);
  f->ws_raw = malloc(f->ws_bytes + 512);
  f->ws = (void *)(((uintptr_t)f->ws_raw + 255) & ~(uintptr_t)255);
  *state = f;
  return 0;
}

static int fixture_teardown(void **state) {
  Fixture *f = *state;
  cpattnPlanDestroy(f->plan);
  cpattnCommDestroy(f->comm);
  float *bufs[9] = {f->q, f->k, f->v, f->o, f->dout, f->dq, f->dk, f->dv, f->lse};
  for (int i = 0; i < 9; ++i) free(bufs[i]);
  free(f->ws_raw);
  free(f);
  return 0;
}

static cpattnResult_t fwd(Fixture *f, const cpattnTensor_t *q, const cpattnTensor_t *k, const cpattnTensor_t *v,
                          const cpattnTensor_t *o, float *lse, void *ws, size_t wsb) {
  return cpattnForward(f->plan, q, k, v, o, lse, ws, wsb, NULL);
}

static void test_bad_descriptors_are_named(void **state) {
  Fixture *f = *state;
  assert_int_equal(fwd(f, &f->tq, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnSuccess);
  cpattnTensor_t t;

  expect(fwd(f, NULL, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument,
         "q must not be NULL", "q NULL");
  t = f->tq; t.data = NULL;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->data", "q data");
  t = f->tq; t.dtype = cpattnBFloat16;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->dtype", "q dtype");
  t = f->tq; t.ndim = 3;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->ndim", "q ndim");
  t = f->tq; t.dims[1] = 15;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->dims[1] (seq)",
         "q seq");
  t = f->tq; t.dims[0] = 3;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument,
         "q->dims[0] (batch)", "q batch");
  t = f->tk; t.dims[2] = 4;
  expect(fwd(f, &f->tq, &t, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument,
         "k->dims[2] (heads)", "k heads");
  t = f->tv; t.dims[3] = 16;
  expect(fwd(f, &f->tq, &f->tk, &t, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "v->dims[3] (dim)",
         "v dim");
  t = f->to; t.strides[3] = 2;
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &t, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "o->strides[3]",
         "o inner stride");
  t = f->tq; t.strides[1] = 4;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->strides overlap",
         "q overlap");
  t = f->tq; t.strides[0] = -1;
  expect(fwd(f, &t, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument, "q->strides[0]",
         "q negative stride");
  t = f->to; t.data = f->q;
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &t, f->lse, f->ws, f->ws_bytes), cpattnInvalidArgument,
         "o must not overlap q", "o aliases q");
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &f->to, NULL, f->ws, f->ws_bytes), cpattnInvalidArgument,
         "lse must not be NULL", "lse NULL");
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes - 1), cpattnWorkspaceTooSmall,
         "workspaceBytes", "workspace small");
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &f->to, f->lse, NULL, f->ws_bytes), cpattnInvalidArgument,
         "workspace must not be NULL", "workspace NULL");
  expect(fwd(f, &f->tq, &f->tk, &f->tv, &f->to, f->lse, (char *)f->ws + 8, f->ws_bytes), cpattnInvalidArgument,
         "256-byte aligned", "workspace aligned");
  expect(cpattnForward(NULL, &f->tq, &f->tk, &f->tv, &f->to, f->lse, f->ws, f->ws_bytes, NULL),
         cpattnInvalidArgument, "plan must not be NULL", "plan NULL");

  assert_int_equal(cpattnBackward(f->plan, &f->tq, &f->tk, &f->tv, &f->to, &f->tdo, f->lse, &f->tdq, &f->tdk, &f->tdv,
                                  f->ws, f->ws_bytes, NULL),
                   cpattnSuccess);
  t = f->tdk; t.data = f->dq;
  expect(cpattnBackward(f->plan, &f->tq, &f->tk, &f->tv, &f->to, &f->tdo, f->lse, &f->tdq, &t, &f->tdv, f->ws,
                        f->ws_bytes, NULL),
         cpattnInvalidArgument, "dq must not overlap dk", "dq aliases dk");
  t = f->tdo; t.dims[1] = 3;
  expect(cpattnBackward(f->plan, &f->tq, &f->tk, &f->tv, &f->to, &t, f->lse, &f->tdq, &f->tdk, &f->tdv, f->ws,
                        f->ws_bytes, NULL),
         cpattnInvalidArgument, "do_->dims[1]", "do dims");
  t = f->tdv; t.data = f->v;
  expect(cpattnBackward(f->plan, &f->tq, &f->tk, &f->tv, &f->to, &f->tdo, f->lse, &f->tdq, &f->tdk, &t, f->ws,
                        f->ws_bytes, NULL),
         cpattnInvalidArgument, "dv must not overlap v", "dv aliases v");
}

static void test_usage_errors(void **state) {
  Fixture *f = *state;
  cpattnConfig_t c = base_config();
  cpattnPlan_t p;
  expect(cpattnPlanCreate(NULL, f->comm, &c), cpattnInvalidArgument, "plan must not be NULL", "plan out NULL");
  expect(cpattnPlanCreate(&p, NULL, &c), cpattnInvalidArgument, "comm must not be NULL", "comm NULL");
  c.executor = cpattnExecutorCuda;
  c.dtype = cpattnBFloat16;
  expect(cpattnPlanCreate(&p, f->comm, &c), cpattnInvalidArgument, "config->executor = Cuda", "executor vs comm");
  assert_null(p);
  expect(cpattnCommDestroy(f->comm), cpattnInvalidUsage, "still exist", "comm destroyed before plan");
  cpattnTensor_t t;
  expect(cpattnTensorInit(&t, NULL, cpattnFloat32, (cpattnLayout_t)5, 1, 1, 1, 1), cpattnInvalidArgument, "layout",
         "tensor layout");
  expect(cpattnTensorInit(&t, NULL, cpattnFloat32, cpattnLayoutBSHD, 1, 1, 0, 1), cpattnInvalidArgument, "heads",
         "tensor heads");
  size_t bytes;
  expect(cpattnPlanGetWorkspaceSize(NULL, &bytes), cpattnInvalidArgument, "plan", "workspace query");
  expect(cpattnCommInitTransport(NULL, NULL), cpattnInvalidArgument, "transport must not be NULL", "transport");
  /* The bounded wait: its arguments, and a host communicator, whose calls are complete
   * when they return, has nothing to wait for. (The GPU side: reliability_gpu_*.) */
  expect(cpattnCommSynchronize(NULL, NULL, 0), cpattnInvalidArgument, "comm must not be NULL", "sync NULL comm");
  expect(cpattnCommSynchronize(f->comm, NULL, -2), cpattnInvalidArgument, "timeoutMs", "sync bad timeout");
  assert_int_equal(cpattnCommSynchronize(f->comm, NULL, 0), cpattnSuccess);
  assert_int_equal(cpattnCommSynchronize(f->comm, NULL, -1), cpattnSuccess);
}

static void test_every_status_has_a_string(void **state) {
  (void)state;
  for (int i = 0; i < cpattnNumResults; ++i) {
    const char *s = cpattnGetErrorString((cpattnResult_t)i);
    assert_non_null(s);
    assert_non_null(strstr(s, "cpattn"));
    for (int j = 0; j < i; ++j) assert_string_not_equal(s, cpattnGetErrorString((cpattnResult_t)j));
  }
  assert_non_null(cpattnGetErrorString((cpattnResult_t)99));
  int v = 0;
  assert_int_equal(cpattnGetVersion(&v), cpattnSuccess);
  assert_int_equal(v, CPATTN_VERSION_CODE);
}

/* Found by tests/fuzz/fuzz_config.c: a world size above INT32_MAX / 2 made the zigzag
 * split compute 2 * world chunks in an int (signed overflow; garbage token counts in a
 * build without UBSan). It must be refused with a message, for BSHD and THD alike. */
static void test_huge_world_size_is_refused(void **state) {
  (void)state;
  static int32_t cu[3] = {0, 7, 20};
  int64_t n = -1;
  cpattnConfig_t c = base_config();
  c.mask = cpattnMaskCausal; /* zigzag: 2 * world chunks */
  expect(cpattnGetLocalTokenCount(&c, 2, 2147483647, &n), cpattnInvalidArgument, "world size", "BSHD, world INT_MAX");
  c.layout = cpattnLayoutTHD;
  c.batch = 2;
  c.seqLen = 20;
  c.cuSeqlens = cu;
  expect(cpattnGetLocalTokenCount(&c, 1, 2147483646, &n), cpattnInvalidArgument, "world size", "THD, world INT_MAX-1");
  assert_int_equal(n, -1);
  /* The largest world accepted still gives a count (THD: almost every chunk empty). */
  assert_int_equal(cpattnGetLocalTokenCount(&c, 0, 1073741823, &n), cpattnSuccess);
  assert_true(n >= 0 && n <= 20);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_bad_config_field_is_named),
      cmocka_unit_test(test_world_size_rules_are_named),
      cmocka_unit_test_setup_teardown(test_bad_descriptors_are_named, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_usage_errors, fixture_setup, fixture_teardown),
      cmocka_unit_test(test_every_status_has_a_string),
      cmocka_unit_test(test_huge_world_size_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
