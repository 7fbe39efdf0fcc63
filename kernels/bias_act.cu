// bias_act: bias along the channel axis, activation, gain and clamp. Twin: cpu::ops::bias_act.
// Memory-bound and only used where a conv epilogue cannot absorb it (mapping layers, tests), so a plain
// element-wise kernel at full bandwidth is all it needs.
#include "common.cuh"

KERNEL_BOUNDED(bias_act, BiasActParams, 256) {
  GRID_STRIDE_LOOP(i, p.n) {
    float v = p.x[i];
    if (p.bias) v += p.bias[(i / p.inner) % p.channels];
    p.y[i] = activate(v, activation_slope(p.act, p.alpha), p.gain, clamp_bound(p.clamp));
  }
}
