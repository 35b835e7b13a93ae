// Decode attention on a CPU: each sequence's one new query token against its cached keys
// and values, for `attention = decode_kernel` (layers/decode_kernel.py builds this file
// with the host's compiler, once per head shape, and calls it through ctypes). One thread:
// the engine's fast CPU designs run one torch thread per engine process.
//
// Why not torch's SDPA: its CPU flash kernel runs a query block of two rows (the query
// heads sharing a KV head) through the machinery of a prefill tile, and reads every
// sequence to the batch's longest context: ~550 us a layer at batch 16 here, more than
// the layer's four projections together. This reads each context to its own length, once
// per KV head for all its query heads, in float32 registers: ~120 us, near the memory
// bandwidth the keys and values need.
//
// Shapes (elements; the head dimension contiguous everywhere):
//   q [B, H, HEAD_DIM] with strides (q_sb, q_sh); out [B, H, HEAD_DIM] contiguous
//   k, v: sequence b, KV head h, position l at b * sb + h * sh + l * sl
//   lengths [B] int64: positions 0 .. lengths[b] - 1 are attended (no causal mask: one query)
//   scratch: GROUP * max_len floats (the scores of one KV head's queries, reused: one thread)
// Query heads h * GROUP .. h * GROUP + GROUP - 1 share KV head h, as transformers' repeat_kv.
// Arithmetic in float32: bfloat16 inputs are widened exactly, the output rounded to nearest even.
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef HEAD_DIM
#error "build with -DHEAD_DIM=<head_dim> -DGROUP=<query heads per KV head>"
#endif
constexpr int D = HEAD_DIM;
constexpr int G = GROUP;

static inline float widen(float x) { return x; }
static inline float widen(uint16_t x) { uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f; }
static inline void narrow(float *o, float f) { *o = f; }
static inline void narrow(uint16_t *o, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) { *o = (uint16_t)((u >> 16) | 0x40); return; }  // NaN stays NaN
    u += 0x7fff + ((u >> 16) & 1);
    *o = (uint16_t)(u >> 16);
}

template <typename T>
static void decode(const T *q, int64_t q_sb, int64_t q_sh, const T *k, const T *v, int64_t sb, int64_t sh, int64_t sl,
                   const int64_t *lengths, int B, int KVH, float scale, T *out, float *scratch, int64_t max_len) {
    const int H = KVH * G;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < KVH; h++) {
            const int64_t L = lengths[b];
            const T *kb = k + b * sb + h * sh, *vb = v + b * sb + h * sh;
            float *s = scratch;
            alignas(64) float qf[G][D], acc[G][D];
            float mx[G], den[G];
            for (int g = 0; g < G; g++) {
                const T *qg = q + b * q_sb + (h * G + g) * q_sh;
                for (int d = 0; d < D; d++) { qf[g][d] = widen(qg[d]) * scale; acc[g][d] = 0.f; }
                mx[g] = -INFINITY;
            }
            for (int64_t l = 0; l < L; l++) {  // scores: each key row read once for the group
                const T *kr = kb + l * sl;
                alignas(64) float kf[D];
                for (int d = 0; d < D; d++) kf[d] = widen(kr[d]);
                for (int g = 0; g < G; g++) {
                    float dot = 0.f;
                    for (int d = 0; d < D; d++) dot += qf[g][d] * kf[d];
                    s[g * max_len + l] = dot;
                    mx[g] = dot > mx[g] ? dot : mx[g];
                }
            }
            for (int g = 0; g < G; g++) {  // softmax numerators
                float *sg = s + g * max_len, m = mx[g], sum = 0.f;
                for (int64_t l = 0; l < L; l++) { const float e = expf(sg[l] - m); sg[l] = e; sum += e; }
                den[g] = sum;
            }
            for (int64_t l = 0; l < L; l++) {  // weighted values: each value row read once for the group
                const T *vr = vb + l * sl;
                alignas(64) float vf[D];
                for (int d = 0; d < D; d++) vf[d] = widen(vr[d]);
                for (int g = 0; g < G; g++) {
                    const float p = s[g * max_len + l];
                    for (int d = 0; d < D; d++) acc[g][d] += p * vf[d];
                }
            }
            for (int g = 0; g < G; g++) {
                T *og = out + ((int64_t)b * H + h * G + g) * D;
                const float inv = 1.f / den[g];
                for (int d = 0; d < D; d++) narrow(og + d, acc[g][d] * inv);
            }
        }
}

extern "C" void decode_attention_bf16(const uint16_t *q, int64_t q_sb, int64_t q_sh, const uint16_t *k, const uint16_t *v,
                                      int64_t sb, int64_t sh, int64_t sl, const int64_t *lengths, int B, int KVH, float scale,
                                      uint16_t *out, float *scratch, int64_t max_len) {
    decode(q, q_sb, q_sh, k, v, sb, sh, sl, lengths, B, KVH, scale, out, scratch, max_len);
}

extern "C" void decode_attention_f32(const float *q, int64_t q_sb, int64_t q_sh, const float *k, const float *v,
                                     int64_t sb, int64_t sh, int64_t sl, const int64_t *lengths, int B, int KVH, float scale,
                                     float *out, float *scratch, int64_t max_len) {
    decode(q, q_sb, q_sh, k, v, sb, sh, sl, lengths, B, KVH, scale, out, scratch, max_len);
}
