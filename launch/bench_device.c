/*
 * bench_device.c -- see bench_device.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifdef CPATTN_HAVE_CUDA
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>
#endif

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}
static double host_t0, host_t1;

int bench_gpu_count(void) {
#ifdef CPATTN_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

int bench_dev_init(BenchDev *d, int cuda, int device) {
  memset(d, 0, sizeof *d);
  d->cuda = cuda;
  d->device = cuda ? device : -1;
#ifdef CPATTN_HAVE_CUDA
  if (cuda) {
    cudaEvent_t a, b;
    cudaStream_t s;
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess)
      return -1;
    d->stream = s;
    d->ev[0] = a;
    d->ev[1] = b;
  }
#else
  if (cuda) return -1;
#endif
  return 0;
}

void bench_dev_fini(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    cudaEventDestroy((cudaEvent_t)d->ev[0]);
    cudaEventDestroy((cudaEvent_t)d->ev[1]);
    cudaStreamDestroy(d->stream);
  }
#endif
  (void)d;
}

void *bench_alloc(BenchDev *d, size_t bytes) {
  if (bytes == 0) bytes = 256;
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    void *p = NULL;
    return cudaMalloc(&p, bytes) == cudaSuccess ? p : NULL;
  }
#endif
  (void)d;
  void *p = NULL;
  return posix_memalign(&p, 256, bytes) == 0 ? p : NULL;
}

void bench_free(BenchDev *d, void *p) {
  if (!p) return;
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    cudaFree(p);
    return;
  }
#endif
  (void)d;
  free(p);
}

int bench_upload(BenchDev *d, void *dst, const void *src, size_t bytes) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1;
#endif
  (void)d;
  memcpy(dst, src, bytes);
  return 0;
}

int bench_download(BenchDev *d, void *dst, const void *src, size_t bytes) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    if (cudaStreamSynchronize(d->stream) != cudaSuccess) return -1;
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
  }
#endif
  (void)d;
  memcpy(dst, src, bytes);
  return 0;
}

int bench_memset(BenchDev *d, void *p, int value, size_t bytes) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) return cudaMemsetAsync(p, value, bytes, d->stream) == cudaSuccess ? 0 : -1;
#endif
  (void)d;
  memset(p, value, bytes);
  return 0;
}

void bench_timer_start(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    cudaEventRecord((cudaEvent_t)d->ev[0], d->stream);
    return;
  }
#endif
  (void)d;
  host_t0 = now_ms();
}

void bench_timer_stop(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    cudaEventRecord((cudaEvent_t)d->ev[1], d->stream);
    return;
  }
#endif
  host_t1 = now_ms();
}

double bench_timer_ms(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    float ms = 0;
    if (cudaEventSynchronize((cudaEvent_t)d->ev[1]) != cudaSuccess) return -1.0;
    if (cudaEventElapsedTime(&ms, (cudaEvent_t)d->ev[0], (cudaEvent_t)d->ev[1]) != cudaSuccess) return -1.0;
    return ms;
  }
#endif
  (void)d;
  return host_t1 - host_t0;
}

int bench_sync(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) return cudaStreamSynchronize(d->stream) == cudaSuccess ? 0 : -1;
#endif
  (void)d;
  return 0;
}

double bench_mem_gib(BenchDev *d) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    return (double)(total - free_b) / (1u << 30);
  }
#endif
  (void)d;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / (1u << 20); /* ru_maxrss is in KiB on Linux */
}

void bench_dev_name(BenchDev *d, char *buf, size_t len) {
#ifdef CPATTN_HAVE_CUDA
  if (d->cuda) {
    struct cudaDeviceProp p;
    int nccl = 0;
    ncclGetVersion(&nccl);
    if (cudaGetDeviceProperties(&p, d->device) == cudaSuccess) {
      /* runtime versions: what was loaded, not what was compiled against */
      snprintf(buf, len, "%s, cuDNN %zu, NCCL %d", p.name, cudnnGetVersion(), nccl);
      return;
    }
  }
#endif
  (void)d;
  snprintf(buf, len, "host CPU");
}
