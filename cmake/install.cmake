# install.cmake -- `cmake --install` puts the libraries, the headers, a CMake package
# (find_package(cpattn) -> cpattn::cpattn, cpattn::cpattn_mpi) and pkg-config files.
include(CMakePackageConfigHelpers)

set(_cpattn_targets cpattn)
if(TARGET cpattn_mpi)
  list(APPEND _cpattn_targets cpattn_mpi)
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
install(EXPORT cpattnTargets NAMESPACE cpattn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)

configure_package_config_file(cmake/cpattnConfig.cmake.in "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfig.cmake"
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/cpattnConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfig.cmake" "${CMAKE_CURRENT_BINARY_DIR}/cpattnConfigVersion.cmake"
  cmake/FindCUDNN.cmake cmake/FindNCCL.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)

set(CPATTN_PC_REQUIRES "")
configure_file(cmake/cpattn.pc.in "${CMAKE_CURRENT_BINARY_DIR}/cpattn.pc" @ONLY)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattn.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(TARGET cpattn_mpi)
  configure_file(cmake/cpattn_mpi.pc.in "${CMAKE_CURRENT_BINARY_DIR}/cpattn_mpi.pc" @ONLY)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/cpattn_mpi.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
