# FindCUDNN.cmake -- locate cuDNN 9 (it ships no CMake package in the usual installs).
#
# Looks in CUDNN_ROOT (variable or environment; e.g. the folder of PyTorch's nvidia.cudnn
# wheel), the CUDA toolkit's own folders and the system paths. Defines CUDNN_FOUND,
# CUDNN_VERSION (from cudnn_version.h) and the imported target CUDNN::cudnn.
#
# Version policy (the research behind it is in the design notes): cuDNN 9.10.0 and
# 9.10.1 are refused (their fp16/bf16 SDPA has known bugs); below 9.15.1 a warning says
# that the backward can fault under CUDA-graph replay for s_kv % 128 != 0, and 9.14 has a
# sliding-window bug (the library also checks the runtime version).
include(FindPackageHandleStandardArgs)

set(_cudnn_hints ${CUDNN_ROOT} $ENV{CUDNN_ROOT} ${CUDNN_HOME} $ENV{CUDNN_HOME})
# The hints first and alone: a copy named by CUDNN_ROOT (e.g. PyTorch's wheel, which
# ships only the versioned libfoo.so.N) must win over an older one in the system paths.
find_path(CUDNN_INCLUDE_DIR cudnn_version.h HINTS ${_cudnn_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR HINTS ${_cudnn_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu NO_DEFAULT_PATH)
find_path(CUDNN_INCLUDE_DIR cudnn_version.h HINTS ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR HINTS ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)

if(CUDNN_INCLUDE_DIR AND EXISTS "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
  file(STRINGS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" _v REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
  string(REGEX REPLACE ".*CUDNN_MAJOR +([0-9]+).*" "\\1" _maj "${_v}")
  string(REGEX REPLACE ".*CUDNN_MINOR +([0-9]+).*" "\\1" _min "${_v}")
  string(REGEX REPLACE ".*CUDNN_PATCHLEVEL +([0-9]+).*" "\\1" _pat "${_v}")
  set(CUDNN_VERSION "${_maj}.${_min}.${_pat}")
endif()

find_package_handle_standard_args(CUDNN REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR VERSION_VAR CUDNN_VERSION)

if(CUDNN_FOUND)
  if(CUDNN_VERSION VERSION_LESS 9.6.0)
    message(WARNING "cuDNN ${CUDNN_VERSION} is older than 9.6: THD needs int64 ragged offsets and token-major stats; "
                    "the CUDA executor is disabled")
    set(CUDNN_FOUND FALSE)
  elseif(CUDNN_VERSION VERSION_EQUAL 9.10.0 OR CUDNN_VERSION VERSION_EQUAL 9.10.1)
    message(WARNING "cuDNN ${CUDNN_VERSION} is refused: its fp16/bf16 SDPA has known bugs (use 9.15.1 or newer); "
                    "the CUDA executor is disabled")
    set(CUDNN_FOUND FALSE)
  elseif(CUDNN_VERSION VERSION_LESS 9.15.1)
    message(WARNING "cuDNN ${CUDNN_VERSION}: 9.15.1 or newer is preferred (backward fault under CUDA-graph replay "
                    "fixed in 9.15.1; 9.14 has a sliding-window bug)")
  endif()
endif()

if(CUDNN_FOUND AND NOT TARGET CUDNN::cudnn)
  add_library(CUDNN::cudnn UNKNOWN IMPORTED)
  set_target_properties(CUDNN::cudnn PROPERTIES
    IMPORTED_LOCATION "${CUDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()
mark_as_advanced(CUDNN_INCLUDE_DIR CUDNN_LIBRARY)
