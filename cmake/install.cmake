# install.cmake -- `cmake --install` puts the libraries, the headers, a CMake package
# (find_package(cpattn) -> cpattn::cpattn, cpattn::cpattn_mpi) and pkg-config files.
#
# The installed tree is relocatable: `cmake --install build --prefix /any/where` (or a
# copy of the tree moved elsewhere) still works, because the CMake package locates itself
# and the pkg-config files derive their prefix from ${pcfiledir}. tests/install.cmake
# proves it by installing into a scratch prefix and building a consumer against it.
include(CMakePackageConfigHelpers)

set(_cpattn_targets cpattn)
if(TARGET cpattn_mpi)
  list(APPEND _cpattn_targets cpattn_mpi)
endif()

# Run-time search paths of the installed binaries. CMake strips the build-tree RUNPATH on
# install, which would leave cpattn-bench unable to find libcpattn anywhere but a system
# prefix. $ORIGIN keeps the tree relocatable; the link directories of dependencies outside
# the system paths (cuDNN from a pip wheel, a CUDA or MPI installed under /opt) are kept
# too, so that neither the installed programs nor a consumer's linker need LD_LIBRARY_PATH.
file(RELATIVE_PATH _cpattn_bin_to_lib "/p/${CMAKE_INSTALL_BINDIR}" "/p/${CMAKE_INSTALL_LIBDIR}")
foreach(_t IN LISTS _cpattn_targets)
  set_target_properties(${_t} PROPERTIES INSTALL_RPATH "$ORIGIN" INSTALL_RPATH_USE_LINK_PATH TRUE)
endforeach()
if(TARGET cpattn-bench)
  set_target_properties(cpattn-bench PROPERTIES INSTALL_RPATH "$ORIGIN/${_cpattn_bin_to_lib}"
    INSTALL_RPATH_USE_LINK_PATH TRUE)
endif()

# cpattn_headers carries the include directories and link dependencies; it installs no files.
install(TARGETS ${_cpattn_targets} cpattn_headers EXPORT cpattnTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/cpattn.h include/cpattn_transport.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET cpattn_mpi)
  install(FILES include/cpattn_mpi.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
# The per-rank launch wrapper (mpirun/srun ... cpattn-run PROGRAM), beside cpattn-bench.
install(PROGRAMS launch/cpattn-run DESTINATION ${CMAKE_INSTALL_BINDIR})
# The PyTorch binding (pure Python over ctypes) and its GPU-free self-check; the binding
# finds the library from here (<prefix>/share/cpattn/python -> <prefix>/lib).
install(FILES python/cpattn_torch.py python/check_binding_abi.py
  DESTINATION ${CMAKE_INSTALL_DATADIR}/cpattn/python)
install(EXPORT cpattnTargets NAMESPACE cpattn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)

# Where cuDNN and NCCL were found at build time: the package config uses them as default
# hints, so a consumer need not repeat -DCUDNN_ROOT=... (its own setting still wins).
set(CPATTN_CUDNN_HINT "")
set(CPATTN_NCCL_HINT "")
if(CPATTN_HAVE_CUDA)
  get_filename_component(CPATTN_CUDNN_HINT "${CUDNN_INCLUDE_DIR}" DIRECTORY)
  get_filename_component(CPATTN_NCCL_HINT "${NCCL_INCLUDE_DIR}" DIRECTORY)
endif()
configure_package_config_file(cmake/cpattnConfig.cmake.in "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfig.cmake"
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)
# 0.x: a minor release may change the API (as the headers say), so only the same minor matches.
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/cpattnConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfig.cmake" "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfigVersion.cmake"
  cmake/FindCUDNN.cmake cmake/FindNCCL.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)

# pkg-config: the prefix is computed from the .pc file's own location, not frozen at
# configure time (CMAKE_INSTALL_PREFIX is not yet known when `--prefix` comes later).
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(CPATTN_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(CPATTN_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(CPATTN_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _pc_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" _pc_up "${_pc_up}")
  set(CPATTN_PC_PREFIX "\${pcfiledir}/${_pc_up}")
  set(CPATTN_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(CPATTN_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(cmake/cpattn.pc.in "${CMAKE_CURRENT_BINARY_DIR}/cpattn.pc" @ONLY)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattn.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(TARGET cpattn_mpi)
  # libcpattn_mpi is built against one MPI and is tied to its ABI: name that MPI's flags, so
  # that `cc $(pkg-config --cflags --libs cpattn_mpi)` works without an MPI wrapper.
  set(CPATTN_PC_MPI_CFLAGS "")
  foreach(_d IN LISTS MPI_C_INCLUDE_DIRS)
    string(APPEND CPATTN_PC_MPI_CFLAGS " -I${_d}")
  endforeach()
  set(CPATTN_PC_MPI_LIBS "")
  foreach(_l IN LISTS MPI_C_LIBRARIES)
    string(APPEND CPATTN_PC_MPI_LIBS " ${_l}")
  endforeach()
  configure_file(cmake/cpattn_mpi.pc.in "${CMAKE_CURRENT_BINARY_DIR}/cpattn_mpi.pc" @ONLY)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattn_mpi.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
