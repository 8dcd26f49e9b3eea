/* Compiled with -std=c99 -pedantic -Werror by the header_c99 test: the public headers
 * are plain C99 and need no CUDA, NCCL or MPI headers. */
#include "cpattn.h"
#include "cpattn_transport.h"

int main(void) {
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  cpattnTensor_t t;
  int version = 0;
  (void)cpattnGetVersion(&version);
  (void)cpattnTensorInit(&t, 0, cpattnBFloat16, cpattnLayoutTHD, 1, 8, 2, 64);
  return cpattnConfigValidate(&c) == cpattnSuccess ? 1 : 0;
}
