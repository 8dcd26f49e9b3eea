# check_install.cmake -- one step of the install test (cmake -DSTEP=... -P this file);
# tests/install.cmake registers each step as a CTest test and passes the variables:
#
#   STEP=install    cmake --install BUILD_DIR --prefix PREFIX (a fresh scratch prefix)
#   STEP=exports    libcpattn*.so export only the cpattn prefix, the soname carries the
#                   major version, installed binaries find libcpattn without LD_LIBRARY_PATH
#   STEP=cmake      configure, build and run this folder's project with find_package(cpattn)
#   STEP=pkgconfig  compile consumer.c (and consumer_mpi.c) with pkg-config's flags alone
#   STEP=python     the installed PyTorch binding finds the installed library by itself and
#                   its ctypes mirrors of the C structs match it (check_binding_abi.py)
#
# A step that cannot run here prints "cpattn-install-skip:" (CTest reports it skipped).
cmake_minimum_required(VERSION 3.18)

set(LIBDIR "${PREFIX}/${INSTALL_LIBDIR}")
string(REPLACE "|" ";" MPIEXEC_PREFLAGS "${MPIEXEC_PREFLAGS}")

function(run_or_fail what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n  ${ARGN}\n${out}\n${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()

# Runs a consumer (under mpiexec for the MPI one) and checks what it printed.
function(run_consumer exe expect)
  if(exe MATCHES "consumer_mpi")
    run_or_fail("${exe}" ${MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 2 ${MPIEXEC_PREFLAGS} ${exe})
  else()
    run_or_fail("${exe}" ${exe})
  endif()
  if(NOT run_out MATCHES "${expect}")
    message(FATAL_ERROR "${exe} printed:\n${run_out}\nexpected to match: ${expect}")
  endif()
  message(STATUS "${exe}: ${run_out}")
endfunction()

if(NOT EXISTS "${PREFIX}/${INSTALL_INCLUDEDIR}/cpattn.h" AND NOT STEP STREQUAL "install")
  message(FATAL_ERROR "nothing installed in ${PREFIX}: the install_tree test must run first")
endif()

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  run_or_fail("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" --config "${CONFIG}")
  foreach(f "${INSTALL_INCLUDEDIR}/cpattn.h" "${INSTALL_INCLUDEDIR}/cpattn_transport.h"
            "${INSTALL_LIBDIR}/cmake/cpattn/cpattnConfig.cmake" "${INSTALL_LIBDIR}/pkgconfig/cpattn.pc"
            "${INSTALL_LIBDIR}/libcpattn.so" "${INSTALL_BINDIR}/cpattn-run")
    if(NOT EXISTS "${PREFIX}/${f}")
      message(FATAL_ERROR "cmake --install did not put ${f} into ${PREFIX}")
    endif()
  endforeach()
  message(STATUS "installed into ${PREFIX}")

elseif(STEP STREQUAL "exports")
  set(libs cpattn)
  if(HAVE_MPI)
    list(APPEND libs cpattn_mpi)
  endif()
  foreach(lib IN LISTS libs)
    set(so "${LIBDIR}/lib${lib}.so")
    run_or_fail("nm" "${NM}" -D --defined-only "${so}")
    string(REGEX MATCHALL "[^\n]+" lines "${run_out}")
    set(foreign "")
    set(count 0)
    foreach(line IN LISTS lines)
      # "address type name": anything defined and exported that is not ours is a leak.
      if(line MATCHES "^[0-9a-fA-F]* *[A-Za-z] ([^ ]+)$")
        set(sym "${CMAKE_MATCH_1}") # saved: a failed MATCHES below clears CMAKE_MATCH_1
        math(EXPR count "${count} + 1")
        if(NOT sym MATCHES "^cpattn")
          list(APPEND foreign "${sym}")
        endif()
      endif()
    endforeach()
    if(foreign OR count EQUAL 0)
      message(FATAL_ERROR "lib${lib}.so exports ${count} symbols; not cpattn-prefixed: ${foreign}")
    endif()
    run_or_fail("readelf" "${READELF}" -d "${so}")
    if(NOT run_out MATCHES "\\(SONAME\\)[^\n]*\\[lib${lib}\\.so\\.${VERSION_MAJOR}\\]")
      message(FATAL_ERROR "lib${lib}.so: soname is not lib${lib}.so.${VERSION_MAJOR}:\n${run_out}")
    endif()
    if(NOT EXISTS "${LIBDIR}/lib${lib}.so.${VERSION_MAJOR}")
      message(FATAL_ERROR "lib${lib}.so.${VERSION_MAJOR} (the soname link) is not installed")
    endif()
    message(STATUS "lib${lib}.so: ${count} exported symbols, all cpattn*; soname lib${lib}.so.${VERSION_MAJOR}")
  endforeach()
  # Installed binaries carry an $ORIGIN RUNPATH, so a relocated prefix keeps working.
  foreach(bin "${LIBDIR}/libcpattn_mpi.so" "${PREFIX}/${INSTALL_BINDIR}/cpattn-bench")
    if(EXISTS "${bin}")
      run_or_fail("readelf" "${READELF}" -d "${bin}")
      if(NOT run_out MATCHES "R(UN)?PATH\\)[^\n]*\\$ORIGIN")
        message(FATAL_ERROR "${bin} has no $ORIGIN run path: it will not find libcpattn outside system paths")
      endif()
    endif()
  endforeach()

elseif(STEP STREQUAL "cmake")
  set(build "${WORK}/cmake-consumer")
  file(REMOVE_RECURSE "${build}")
  # No registries and no environment paths: only PREFIX can satisfy find_package(cpattn).
  run_or_fail("configuring the consumer" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${build}" -G "${GENERATOR}"
    "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DCMAKE_BUILD_TYPE=${CONFIG}"
    "-DCONSUMER_CPATTN_VERSION=${VERSION}" "-DCONSUMER_WITH_MPI=${HAVE_MPI}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
  if(NOT run_out MATCHES "consumer: cpattn ${VERSION} from ${PREFIX}/")
    message(FATAL_ERROR "the consumer did not find cpattn ${VERSION} in ${PREFIX}:\n${run_out}")
  endif()
  run_or_fail("building the consumer" "${CMAKE_COMMAND}" --build "${build}" --config "${CONFIG}")
  run_consumer("${build}/consumer" "^cpattn ${VERSION}: valid config accepted")
  if(HAVE_MPI)
    run_consumer("${build}/consumer_mpi" "cpattn_mpi: 2 ranks agree")
  endif()

elseif(STEP STREQUAL "pkgconfig")
  if(NOT PKG_CONFIG)
    message(STATUS "cpattn-install-skip: pkg-config not found (Debian: apt-get install pkg-config)")
    return()
  endif()
  # Only the scratch prefix's .pc files: a cpattn installed elsewhere cannot answer.
  set(ENV{PKG_CONFIG_LIBDIR} "${LIBDIR}/pkgconfig")
  unset(ENV{PKG_CONFIG_PATH})
  set(programs consumer)
  if(HAVE_MPI)
    list(APPEND programs consumer_mpi)
  endif()
  foreach(prog IN LISTS programs)
    string(REPLACE "consumer" "cpattn" pkg "${prog}")
    run_or_fail("pkg-config ${pkg}" "${PKG_CONFIG}" --cflags --libs ${pkg})
    string(STRIP "${run_out}" flags)
    separate_arguments(flags UNIX_COMMAND "${flags}")
    run_or_fail("pkg-config libdir" "${PKG_CONFIG}" --variable=libdir ${pkg})
    string(STRIP "${run_out}" pc_libdir)
    get_filename_component(pc_libdir_real "${pc_libdir}" REALPATH)
    get_filename_component(libdir_real "${LIBDIR}" REALPATH)
    if(NOT pc_libdir_real STREQUAL libdir_real)
      message(FATAL_ERROR "${pkg}.pc says libdir=${pc_libdir}, the library is in ${LIBDIR}")
    endif()
    # The rpath stands in for LD_LIBRARY_PATH, which a user of a non-system prefix sets.
    run_or_fail("compiling ${prog}.c with pkg-config's flags" "${C_COMPILER}" -std=c11 -Wall -Werror
      "${SOURCE_DIR}/${prog}.c" ${flags} "-Wl,-rpath,${pc_libdir}" -o "${WORK}/${prog}_pc")
    run_consumer("${WORK}/${prog}_pc" "(valid config accepted|2 ranks agree)")
  endforeach()

elseif(STEP STREQUAL "python")
  if(NOT PYTHON)
    message(STATUS "cpattn-install-skip: no python3 found")
    return()
  endif()
  unset(ENV{CPATTN_LIBRARY}) # the binding must find the library on its own
  unset(ENV{PYTHONPATH})
  set(script "${PREFIX}/${INSTALL_DATADIR}/cpattn/python/check_binding_abi.py")
  run_or_fail("${script}" "${PYTHON}" "${script}")
  if(NOT run_out MATCHES "library: ${LIBDIR}/libcpattn.so.${VERSION_MAJOR}\n.*all checks passed")
    message(FATAL_ERROR "the installed binding did not load the installed library, or a check failed:\n${run_out}")
  endif()
  message(STATUS "${run_out}")

else()
  message(FATAL_ERROR "STEP must be install, exports, cmake, pkgconfig or python (got '${STEP}')")
endif()
