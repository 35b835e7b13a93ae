// Decode attention on a CPU: each sequence's one new query token against its cached keys
// and values, for `attention = decode_kernel` (layers/decode_kernel.py builds this file
// with the host's compiler, once per head shape, and calls it through ctypes). Its
// (sequence, KV head) pairs are shared among torch's threads: built with -fopenmp, this
// library binds to the OpenMP runtime torch already loaded (the same soname), so its
// parallel loop runs on torch's own team, as many threads as torch.set_num_threads, and
// a one-thread engine runs it inline.
//
// Why not torch's SDPA: its CPU flash kernel runs a query block of two rows (the query
// heads sharing a KV head) through the machinery of a prefill tile, and reads every
// sequence to the batch's longest context: ~550 us a layer at batch 16 here, more than
// the layer's four projections together. This reads each context to its own length, once
// per KV head for all its query heads, in float32 registers. Where the CPU has AVX-512 and
// the head size is a multiple of 16, the loops are written out in its intrinsics (a key's
// dot products and the softmax's exponentials 16 lanes at a time: ~40 us a layer at batch
// 16, from ~340 for the plain loops below, which the compiler left scalar); elsewhere the
// plain loops run.
//
// Shapes (elements; the head dimension contiguous everywhere):
//   q [B, H, HEAD_DIM] with strides (q_sb, q_sh); out [B, H, HEAD_DIM] contiguous
//   k, v: sequence b, KV head h, position l at b * sb + h * sh + l * sl
//   rows [B] int64, or null: query b reads cache row (slot) rows[b]; null: row b
//   lengths [rows] int64: row r's positions 0 .. lengths[r] - 1 are attended (no causal mask: one query)
//   scratch: threads * GROUP * max_len floats (the scores of one KV head's queries; a slice per thread)
//   threads: how many threads share the pairs (torch's count, which sized scratch)
// Query heads h * GROUP .. h * GROUP + GROUP - 1 share KV head h, as transformers' repeat_kv.
// Arithmetic in float32: bfloat16 inputs are widened exactly, the output rounded to nearest even.
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef HEAD_DIM
#error "build with -DHEAD_DIM=<head_dim> -DGROUP=<query heads per KV head>"
#endif
constexpr int D = HEAD_DIM;
constexpr int G = GROUP;
// A call shares its pairs among threads from this many key rows (~10-20 ns each here): a
// batch-16 decode over 4 KV heads at ~100 positions reads 6,400; a few short contexts run
// on one thread, where the team's wake-up and barrier would cost more than half the work.
constexpr int64_t SHARE_FROM = 4096;

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

// One query token's G heads against one KV head (kb, vb) of L positions -> G rows of D at og.
template <typename T>
static void head_plain(const T *qh, int64_t q_sh, const T *kb, const T *vb, int64_t sl, int64_t L, float scale, T *og,
                       float *s, int64_t max_len) {
    alignas(64) float qf[G][D], acc[G][D];
    float mx[G], den[G];
    for (int g = 0; g < G; g++) {
        const T *qg = qh + g * q_sh;
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
        const float inv = 1.f / den[g];
        for (int d = 0; d < D; d++) narrow(og + g * D + d, acc[g][d] * inv);
    }
}

#if defined(__AVX512F__) && HEAD_DIM % 16 == 0 && !defined(PLAIN)  // -DPLAIN: the plain loops (tests build both)
#define HAVE_VECTOR_HEAD 1
constexpr int NC = D / 16;  // 16-float chunks of a head

static inline __m512 load16(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const uint16_t *p) {  // bfloat16 -> float32 is exact: the bits, shifted
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

// e^x for x <= 0 (a score minus its row's maximum): 2^n * e^r, |r| <= ln2 / 2, by a
// degree-6 Taylor polynomial (relative error ~1e-7, about float32's own rounding). Below
// -80 it is 0: e^-80 is 1e-35 of the row's largest term, nothing to a float32 sum, and
// letting it run down into subnormals costs a microcode assist per lane (measured: a
// layer took 2-3x as long on a model whose scores spread wide).
static inline __m512 exp_nonpositive(__m512 x) {
    const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-80.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-80.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts: r stays exact
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_maskz_scalef_ps(kept, p, n);
}

// The cache is read from L3 or memory (a step's linears evict it from L2), in runs of a
// few kilobytes per head, too short for the hardware prefetcher, which also stops at each
// page: rows are asked for AHEAD rows before they are read.
constexpr int AHEAD = 12;
template <typename T>
static inline void prefetch_row(const T *p) {
    for (int i = 0; i < (int)(D * sizeof(T)); i += 64) _mm_prefetch((const char *)p + i, _MM_HINT_T0);
}

static inline __mmask16 tail(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }

template <typename T>
static void head_vector(const T *qh, int64_t q_sh, const T *kb, const T *vb, int64_t sl, int64_t L, float scale, T *og,
                        float *s, int64_t max_len) {
    __m512 qv[G][NC];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < NC; c++) qv[g][c] = _mm512_mul_ps(load16(qh + g * q_sh + 16 * c), _mm512_set1_ps(scale));
    for (int64_t l = 0; l < L; l++) {  // scores: each key row read once for the group
        const T *kr = kb + l * sl;
        prefetch_row(kr + AHEAD * sl);
        __m512 kv[NC];
        for (int c = 0; c < NC; c++) kv[c] = load16(kr + 16 * c);
        for (int g = 0; g < G; g++) {
            __m512 a = _mm512_mul_ps(qv[g][0], kv[0]);
            for (int c = 1; c < NC; c++) a = _mm512_fmadd_ps(qv[g][c], kv[c], a);
            s[g * max_len + l] = _mm512_reduce_add_ps(a);
        }
    }
    float inv[G];
    for (int g = 0; g < G; g++) {  // softmax numerators, 16 positions at a time
        float *sg = s + g * max_len;
        __m512 m = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
        for (int64_t l = 0; l < L; l += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(L - l), sg + l));
        const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        for (int64_t l = 0; l < L; l += 16) {
            const __mmask16 k = tail(L - l);
            const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sg + l), mx));
            _mm512_mask_storeu_ps(sg + l, k, e);
            sum = _mm512_mask_add_ps(sum, k, sum, e);
        }
        inv[g] = 1.f / _mm512_reduce_add_ps(sum);
    }
    __m512 acc[G][NC];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < NC; c++) acc[g][c] = _mm512_setzero_ps();
    for (int64_t l = 0; l < L; l++) {  // weighted values: each value row read once for the group
        const T *vr = vb + l * sl;
        prefetch_row(vr + AHEAD * sl);
        __m512 vv[NC];
        for (int c = 0; c < NC; c++) vv[c] = load16(vr + 16 * c);
        for (int g = 0; g < G; g++) {
            const __m512 p = _mm512_set1_ps(s[g * max_len + l]);
            for (int c = 0; c < NC; c++) acc[g][c] = _mm512_fmadd_ps(p, vv[c], acc[g][c]);
        }
    }
    for (int g = 0; g < G; g++) {
        alignas(64) float o[D];
        for (int c = 0; c < NC; c++) _mm512_store_ps(o + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv[g])));
        for (int d = 0; d < D; d++) narrow(og + g * D + d, o[d]);
    }
}
#endif

template <typename T>
static void decode(const T *q, int64_t q_sb, int64_t q_sh, const T *k, const T *v, int64_t sb, int64_t sh, int64_t sl,
                   const int64_t *rows, const int64_t *lengths, int B, int KVH, float scale, T *out, float *scratch,
                   int64_t max_len, int threads) {
    const int pairs = B * KVH;
    int64_t rows_read = 0;  // key rows the call reads: below SHARE_FROM, waking a team costs more than it saves
    for (int b = 0; b < B; b++) rows_read += lengths[rows ? rows[b] : b] * KVH;
    // dynamic: contexts differ in length, so equal shares of pairs are not equal work
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && pairs > 1 && rows_read >= SHARE_FROM)
    for (int i = 0; i < pairs; i++) {
        const int b = i / KVH, h = i % KVH;
        const int64_t row = rows ? rows[b] : b, L = lengths[row];
#ifdef _OPENMP
        float *own = scratch + (int64_t)omp_get_thread_num() * G * max_len;
#else
        float *own = scratch;
#endif
        const T *qh = q + b * q_sb + h * G * q_sh, *kb = k + row * sb + h * sh, *vb = v + row * sb + h * sh;
        T *og = out + ((int64_t)b * KVH * G + h * G) * D;
#ifdef HAVE_VECTOR_HEAD
        head_vector(qh, q_sh, kb, vb, sl, L, scale, og, own, max_len);
#else
        head_plain(qh, q_sh, kb, vb, sl, L, scale, og, own, max_len);
#endif
    }
}

extern "C" void decode_attention_bf16(const uint16_t *q, int64_t q_sb, int64_t q_sh, const uint16_t *k, const uint16_t *v,
                                      int64_t sb, int64_t sh, int64_t sl, const int64_t *rows, const int64_t *lengths, int B, int KVH,
                                      float scale, uint16_t *out, float *scratch, int64_t max_len, int threads) {
    decode(q, q_sb, q_sh, k, v, sb, sh, sl, rows, lengths, B, KVH, scale, out, scratch, max_len, threads);
}

extern "C" void decode_attention_f32(const float *q, int64_t q_sb, int64_t q_sh, const float *k, const float *v,
                                     int64_t sb, int64_t sh, int64_t sl, const int64_t *rows, const int64_t *lengths, int B, int KVH,
                                     float scale, float *out, float *scratch, int64_t max_len, int threads) {
    decode(q, q_sb, q_sh, k, v, sb, sh, sl, rows, lengths, B, KVH, scale, out, scratch, max_len, threads);
}
