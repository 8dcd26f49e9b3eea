/*
 * consumer.c -- a program that knows cpattn only through its installed package
 * (tests/install.cmake builds it with find_package(cpattn) and with pkg-config).
 *
 * It checks what a broken install gets wrong: a header from one version with a library
 * from another, and a library whose error reporting does not reach the caller.
 */
#include <cpattn.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  int version = 0;
  if (cpattnGetVersion(&version) != cpattnSuccess || version != CPATTN_VERSION_CODE) {
    fprintf(stderr, "consumer: library version %d, header version %d\n", version, CPATTN_VERSION_CODE);
    return 1;
  }
  cpattnConfig_t config = CPATTN_CONFIG_INITIALIZER;
  config.numHeadsQ = 8;
  config.numHeadsKV = 2;
  config.headDimQK = 64;
  config.seqLen = 1025;
  config.mask = cpattnMaskCausal;
  if (cpattnConfigValidate(&config) != cpattnSuccess) {
    fprintf(stderr, "consumer: a valid config was refused: %s\n", cpattnGetLastError());
    return 1;
  }
  config.numHeadsKV = 3; /* does not divide numHeadsQ */
  cpattnResult_t res = cpattnConfigValidate(&config);
  if (res != cpattnInvalidArgument || !strstr(cpattnGetLastError(), "numHeadsKV")) {
    fprintf(stderr, "consumer: a bad config gave %s, \"%s\"\n", cpattnGetErrorString(res), cpattnGetLastError());
    return 1;
  }
  printf("cpattn %d.%d.%d: valid config accepted, bad one refused (%s)\n", version / 10000, version / 100 % 100,
         version % 100, cpattnGetLastError());
  return 0;
}
