#!/usr/bin/env bash
# The kernel tests against a build whose split heads ignore the step's written blocks (every
# early entry taken): they must fail, as the kernels then copy blocks the late writer has not
# yet written.
set -uo pipefail
source bench/results/cuda/2026-11-24/session9/device_env.sh
timeout 200 $pack/bin/test_cuda_kernels_mutant --gtest_filter='DecodeAttention.*' > $OUT/mutant.log 2>&1
echo "mutant rc $? (1 expected), failures: $(grep -c Failure $OUT/mutant.log)"
grep -E "^\[  (PASSED|FAILED) " $OUT/mutant.log | head
