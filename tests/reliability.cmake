# Reliability tests (included by tests/CMakeLists.txt, in its directory scope).
#
# cpattn-bench under mpirun, driven by tests/test_faults.sh: ranks that disagree on the
# config (two command lines in one job), a rank that stalls, a rank that dies. Each case
# proves that the job ends within a bound with a non-zero status and that the ranks still
# alive print the error; the script states each bound. The fuzz targets and the
# sanitizer and valgrind runs live in .ci/ (fuzz.sh, sanitize.sh, valgrind.sh).

if(CPATTN_HAVE_MPI AND TARGET cpattn-bench)
  foreach(case mismatch stall exit)
    add_test(NAME reliability_${case}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_faults.sh ${case} $<TARGET_FILE:cpattn-bench>
              ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${CPATTN_MPIEXEC_PREFLAGS})
    # 60 s: the script stops a hung job itself after 45 s and says so.
    set_tests_properties(reliability_${case} PROPERTIES TIMEOUT 60 PROCESSORS 2)
  endforeach()
  # The same stall and dead peer on two GPUs: NCCL kernels that never end, turned into
  # cpattnTimeout by the bounded wait and an abort of the communicator (skipped: exit 77
  # without two GPUs, as in CI).
  if(CPATTN_HAVE_CUDA)
    foreach(case stall exit)
      add_test(NAME reliability_gpu_${case}
        COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_faults.sh ${case} $<TARGET_FILE:cpattn-bench>
                ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${CPATTN_MPIEXEC_PREFLAGS})
      set_tests_properties(reliability_gpu_${case} PROPERTIES TIMEOUT 90 PROCESSORS 2 SKIP_RETURN_CODE 77
        ENVIRONMENT "FAULT_EXECUTOR=cuda;NCCL_NVLS_ENABLE=0")
    endforeach()
  endif()
endif()
