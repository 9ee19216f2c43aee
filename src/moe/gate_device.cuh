/* Device helpers of the routing gate's segment kernel (gate.cu) that the
 * tests also run (tests/gate/gate_sigmoid_kernel.cu). */
#ifndef VCOLL_GATE_DEVICE_CUH_
#define VCOLL_GATE_DEVICE_CUH_

#include <cuda_runtime.h>
#include <stdint.h>

namespace vcollGate {

/* Bound on |sigmoidApprox(x) - vgSigmoid(x)| (gate_common.h) for every
 * float x that is not NaN: 2^-20. The expected error is about 2^-22 (the
 * two approximations' few ulp and vgSigmoid's own); tests/gate checks the
 * bound for all 2^32 inputs. */
constexpr float kSigApproxErr = 9.5367431640625e-07f;

/* sigmoid(x) from the hardware's approximate 2^t and reciprocal: 2 MUFU and
 * 2 FMA-pipe instructions instead of about 20 for vgSigmoid, and no clamp:
 * x = -inf gives 0, +inf gives 1, NaN gives NaN. The segment kernel selects
 * with these scores and the bound above, and falls back to the exact ones
 * wherever the bound cannot decide. */
__device__ __forceinline__ float sigmoidApprox(float x) {
  float e, s;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmul_rn(x, -1.44269504088896341f)));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(s) : "f"(__fadd_rn(1.0f, e)));
  return s;
}

}  // namespace vcollGate

#endif /* VCOLL_GATE_DEVICE_CUH_ */
