/*
 * bench_device.h -- the few memory and timing operations cpattn-bench needs, on host
 * memory (host executor) or on the rank's GPU (CUDA executor), so the driver itself
 * never branches on the executor.
 */
#ifndef CPATTN_LAUNCH_BENCH_DEVICE_H_
#define CPATTN_LAUNCH_BENCH_DEVICE_H_

#include <stddef.h>

struct CUstream_st;

typedef struct {
  int cuda;                   /* 0: host memory, CPU clock                              */
  int device;                 /* CUDA device, -1 on the host                            */
  struct CUstream_st *stream; /* the stream cpattn runs on                              */
  void *ev[2];                /* CUDA events for timing                                 */
} BenchDev;

/* Number of visible CUDA devices (0 without CUDA or without a GPU). */
int bench_gpu_count(void);

/* Sets up the device (cudaSetDevice, a stream, events) or the host. 0 on success. */
int bench_dev_init(BenchDev *d, int cuda, int device);
void bench_dev_fini(BenchDev *d);

void *bench_alloc(BenchDev *d, size_t bytes); /* device or host; 256-byte aligned; NULL on failure */
void bench_free(BenchDev *d, void *p);
int bench_upload(BenchDev *d, void *dst, const void *src, size_t bytes);
int bench_download(BenchDev *d, void *dst, const void *src, size_t bytes);
int bench_memset(BenchDev *d, void *p, int value, size_t bytes);

/* Timing of work enqueued between start and stop (events on the GPU, a clock on the
 * host). stop only marks the end; once the work is done (bench_sync, or the bounded
 * cpattnCommSynchronize that the timed runs use, so a stalled peer cannot hang the
 * bench) bench_timer_ms returns the milliseconds, or a negative value on a device error. */
void bench_timer_start(BenchDev *d);
void bench_timer_stop(BenchDev *d);
double bench_timer_ms(BenchDev *d);
int bench_sync(BenchDev *d);

/* Bytes of device memory in use (GPU) or the peak resident set (host). */
double bench_mem_gib(BenchDev *d);

/* A description of the device ("NVIDIA H200" or "host CPU"). */
void bench_dev_name(BenchDev *d, char *buf, size_t len);

#endif /* CPATTN_LAUNCH_BENCH_DEVICE_H_ */
