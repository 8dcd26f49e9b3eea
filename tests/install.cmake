# install.cmake (tests) -- `cmake --install` of this build into a scratch prefix, then
# programs that know cpattn only through the installed package: built with
# find_package(cpattn) and with pkg-config, and run; and the installed PyTorch binding's
# GPU-free self-check. The steps live in
# install_consumer/check_install.cmake; install_tree runs first (a CTest fixture).
find_program(CPATTN_PKG_CONFIG NAMES pkg-config pkgconf)
if(NOT CPATTN_PKG_CONFIG)
  message(STATUS "cpattn: pkg-config not found: test install_pkgconfig_consumer will be skipped "
                 "(Debian: apt-get install pkg-config)")
endif()

set(_inst_work "${CMAKE_CURRENT_BINARY_DIR}/install_test")
set(_inst_mpi OFF)
set(_inst_mpiexec "")
if(TARGET cpattn_mpi)
  set(_inst_mpi ON)
  set(_inst_mpiexec ${MPIEXEC_EXECUTABLE})
endif()
# A list inside one -D argument would be split by CTest: pass it '|'-separated.
string(REPLACE ";" "|" _inst_preflags "${CPATTN_MPIEXEC_PREFLAGS}")

find_package(Python3 COMPONENTS Interpreter QUIET)

foreach(step install exports cmake pkgconfig python)
  set(_name install_${step})
  if(step STREQUAL "install")
    set(_name install_tree)
  elseif(step STREQUAL "cmake")
    set(_name install_cmake_consumer)
  elseif(step STREQUAL "pkgconfig")
    set(_name install_pkgconfig_consumer)
  elseif(step STREQUAL "python")
    set(_name install_python_binding)
  endif()
  add_test(NAME ${_name}
    COMMAND ${CMAKE_COMMAND} -DSTEP=${step}
      -DBUILD_DIR=${PROJECT_BINARY_DIR} -DPREFIX=${_inst_work}/prefix -DWORK=${_inst_work}
      -DSOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/install_consumer -DCONFIG=$<CONFIG>
      -DINSTALL_LIBDIR=${CMAKE_INSTALL_LIBDIR} -DINSTALL_INCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR}
      -DINSTALL_BINDIR=${CMAKE_INSTALL_BINDIR} -DINSTALL_DATADIR=${CMAKE_INSTALL_DATADIR}
      -DPYTHON=${Python3_EXECUTABLE}
      -DVERSION=${PROJECT_VERSION} -DVERSION_MAJOR=${PROJECT_VERSION_MAJOR}
      -DGENERATOR=${CMAKE_GENERATOR} -DC_COMPILER=${CMAKE_C_COMPILER}
      -DNM=${CMAKE_NM} -DREADELF=${CMAKE_READELF} -DPKG_CONFIG=${CPATTN_PKG_CONFIG}
      -DHAVE_MPI=${_inst_mpi} -DMPIEXEC=${_inst_mpiexec} -DMPIEXEC_NUMPROC_FLAG=${MPIEXEC_NUMPROC_FLAG}
      -DMPIEXEC_PREFLAGS=${_inst_preflags}
      -P ${CMAKE_CURRENT_SOURCE_DIR}/install_consumer/check_install.cmake)
  set_tests_properties(${_name} PROPERTIES TIMEOUT 300 SKIP_REGULAR_EXPRESSION "cpattn-install-skip:")
  if(step STREQUAL "install")
    set_tests_properties(${_name} PROPERTIES FIXTURES_SETUP cpattn_installed)
  else()
    set_tests_properties(${_name} PROPERTIES FIXTURES_REQUIRED cpattn_installed)
  endif()
endforeach()
if(_inst_mpi)
  # Each runs its MPI consumer on two ranks.
  set_tests_properties(install_cmake_consumer install_pkgconfig_consumer PROPERTIES PROCESSORS 2)
endif()
