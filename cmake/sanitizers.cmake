# Sanitizer and fuzzer builds (scripts/sanitize.sh, scripts/fuzz.sh). The flags go on every C and
# C++ target defined after this file is included; CUDA and the benchmarks stay off in these
# builds (the scripts pass -DSPANSERVE_CUDA=OFF -DSPANSERVE_BENCH=OFF).
#   SPANSERVE_SANITIZE=address,undefined | thread   the unit tests and the server, instrumented
#   SPANSERVE_FUZZ=ON                               the libFuzzer targets of tests/fuzz (clang)
set(SPANSERVE_SANITIZE "" CACHE STRING "Sanitizers for every target: address,undefined or thread")
option(SPANSERVE_FUZZ "Build the libFuzzer targets in tests/fuzz (clang, ASan + UBSan)" OFF)

# Any UB report fails the run; frame pointers give the reports whole stacks.
set(spanserve_sanitize_common -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
if(SPANSERVE_SANITIZE AND SPANSERVE_FUZZ)
  message(FATAL_ERROR "SPANSERVE_FUZZ brings its own sanitizers: leave SPANSERVE_SANITIZE empty")
endif()
# The sanitizer runtimes refuse dlopen's RTLD_DEEPBIND (engine/model/tokenizer_loader.cc).
if(SPANSERVE_SANITIZE OR SPANSERVE_FUZZ)
  add_compile_definitions(SPANSERVE_SANITIZED)
endif()
if(SPANSERVE_SANITIZE)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${SPANSERVE_SANITIZE}>"
                      "$<$<COMPILE_LANGUAGE:C,CXX>:${spanserve_sanitize_common}>")
  add_link_options(-fsanitize=${SPANSERVE_SANITIZE})
endif()
if(SPANSERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "SPANSERVE_FUZZ needs clang (-DCMAKE_CXX_COMPILER=clang++)")
  endif()
  # Library code gets coverage without libFuzzer's main; the fuzz targets link it (tests/fuzz).
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link,address,undefined>"
                      "$<$<COMPILE_LANGUAGE:C,CXX>:${spanserve_sanitize_common}>")
  add_link_options(-fsanitize=address,undefined)
endif()
