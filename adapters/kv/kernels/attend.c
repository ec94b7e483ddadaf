/* Fused attention over a paged KV store for a few query rows (decode, verify), CPU.
 *
 * One layer of one request: R query rows per KV head (R = G * T: G query heads per KV head, T new
 * tokens) attend over the request's keys, which come from several *sources* -- the quantized
 * segments (INT8 / INT4 / INT2 packed codes with FP16 scales and zero points, the layouts of
 * adapters/kv/quant.py) and the full-precision arena (float32, float16 or bfloat16).  Each source
 * is read once, tile by tile: a tile of keys and values is dequantized (or widened) into a small
 * buffer that stays in L1, scored, and folded into a running softmax (Milakov & Gimelshein 2018;
 * the split over key chunks is flash-decoding's).  No dequantized copy of the context is made.
 *
 * Quantized tiles are never dequantized into a buffer: with a scale s and zero point z per group,
 *   q . (c * s + z) = (q * s) . c + q . z        (keys: the scale folded into the query)
 *   sum_t p_t (c_t * s_t + z_t) = sum_t (p_t * s_t) c_t + sum_t p_t z_t   (values: into p)
 * so the codes are widened to float32 and fed straight into the FMAs.  This is the same
 * arithmetic as the torch path (adapters.kv.paged.PagedKV.dequant in float32, then SDPA) up to
 * the order of float32 operations.
 *
 * State per call sequence (one layer): m [K, R], l [K, R], acc [K, R, D], all float32, set by
 * attend_init, updated by each attend_* call, turned into the output by attend_finish.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <immintrin.h>

#define TILE 32
#define NEG (-1e30f)
#define AHEAD 2  /* dense tiles prefetched ahead */

enum { KV_F32 = 0, KV_F16 = 1, KV_BF16 = 2 };

#if defined(__F16C__)
static inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }  /* no false dependency */
#else
static inline float f16_to_f32(uint16_t h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
#endif
static inline float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f;
}
/* FP16 -> float32 for n values, 16 (AVX-512) or 8 (F16C) at a time: GCC's scalar _Float16
 * conversions carry a false dependency from one value to the next. */
static void f16_widen(const uint16_t *src, int n, float *dst) {
    int i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
/* n values of a KV-dtype row -> float32 (contiguous, vectorized). */
static void widen(const void *src, int64_t off, int n, int kv, float *dst) {
    if (kv == KV_F16) {
        f16_widen((const uint16_t *)src + off, n, dst);
    } else if (kv == KV_BF16) {
        const uint16_t *s = (const uint16_t *)src + off;
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(dst, (const float *)src + off, sizeof(float) * (size_t)n);
    }
}

/* Codes i0 .. i0 + n - 1 of a packed array (i0 a multiple of 8 / bits) -> bytes. */
static void unpack(const uint8_t *p, int64_t i0, int n, int bits, uint8_t *out) {
    if (bits == 8) { memcpy(out, p + i0, (size_t)n); return; }
    if (bits == 4) {
        const uint8_t *b = p + (i0 >> 1);
        for (int j = 0; j < (n + 1) / 2; j++) { out[2 * j] = b[j] & 15u; out[2 * j + 1] = b[j] >> 4; }
        return;
    }
    const uint8_t *b = p + (i0 >> 2);
    for (int j = 0; j < (n + 3) / 4; j++) {
        out[4 * j] = b[j] & 3u; out[4 * j + 1] = (b[j] >> 2) & 3u;
        out[4 * j + 2] = (b[j] >> 4) & 3u; out[4 * j + 3] = b[j] >> 6;
    }
}

/* dst[i] = code[i] * scale + zero in float32 (the generic path; code * scale is exact). */
static inline void dequant(const uint8_t *code, int n, uint16_t s16, uint16_t z16, float *dst) {
    float s = f16_to_f32(s16), z = f16_to_f32(z16);
    for (int i = 0; i < n; i++) dst[i] = (float)code[i] * s + z;
}

/* 16 codes from code index i0 (a multiple of 16) of a packed array, as 16 bytes in order. */
static inline __m128i codes16(const uint8_t *p, int64_t i0, int bits) {
    if (bits == 8) return _mm_loadu_si128((const __m128i *)(p + i0));
    const __m128i low2 = _mm_set1_epi8(3), low4 = _mm_set1_epi8(15);
    if (bits == 4) {  /* 8 bytes, low nibble first */
        __m128i b = _mm_loadl_epi64((const __m128i *)(p + (i0 >> 1)));
        __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        return _mm_unpacklo_epi8(lo, hi);
    }
    int32_t w;  /* 4 bytes, lowest bits first */
    memcpy(&w, p + (i0 >> 2), 4);
    __m128i b = _mm_cvtsi32_si128(w);
    __m128i f0 = _mm_and_si128(b, low2), f1 = _mm_and_si128(_mm_srli_epi16(b, 2), low2);
    __m128i f2 = _mm_and_si128(_mm_srli_epi16(b, 4), low2);
    __m128i f3 = _mm_and_si128(_mm_srli_epi16(b, 6), low2);
    return _mm_unpacklo_epi16(_mm_unpacklo_epi8(f0, f1), _mm_unpacklo_epi8(f2, f3));
}

/* Scores of R rows against n keys: kf row-major [n][D] (kt == 0) or column-major [D][TILE]
 * (kt == 1, the per-channel key layout) -> sc [R][TILE], times scale. */
static void scores(int R, int D, int n, const float *q, const float *kf, int kt, float scale,
                   float *sc) {
    if (kt) {
        for (int r = 0; r < R; r++) {
            float *o = sc + r * TILE;
            const float *qr = q + (int64_t)r * D;
            for (int i = 0; i < TILE; i++) o[i] = 0.f;
            for (int d = 0; d < D; d++) {
                float w = qr[d];
                const float *k = kf + d * TILE;
#pragma omp simd
                for (int i = 0; i < TILE; i++) o[i] += w * k[i];
            }
            for (int i = 0; i < n; i++) o[i] *= scale;
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const float *k = kf + (int64_t)i * D;
        for (int r = 0; r < R; r++) {
            const float *qr = q + (int64_t)r * D;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int d = 0; d < D; d++) s += qr[d] * k[d];
            sc[r * TILE + i] = s * scale;
        }
    }
}

#if defined(__AVX512F__)
static inline __attribute__((always_inline)) void pv_rows(int rn, int D, int n, const float *p,
                                                          const float *vf, int d0, float *acc) {
    __m512 a[4];
    for (int k = 0; k < rn; k++) a[k] = _mm512_loadu_ps(acc + (int64_t)k * D + d0);
    for (int i = 0; i < n; i++) {
        __m512 v = _mm512_loadu_ps(vf + (int64_t)i * D + d0);
        for (int k = 0; k < rn; k++) a[k] = _mm512_fmadd_ps(_mm512_set1_ps(p[k * TILE + i]), v, a[k]);
    }
    for (int k = 0; k < rn; k++) _mm512_storeu_ps(acc + (int64_t)k * D + d0, a[k]);
}
#endif

/* acc [R][D] += p [R][TILE] x vf [n][D]: each value row is read once per 4 query rows, the 4
 * rows' accumulators stay in registers. */
static void pv(int R, int D, int n, const float *p, const float *vf, float *acc) {
#if defined(__AVX512F__)
    if (D % 16 == 0) {
        for (int d0 = 0; d0 < D; d0 += 16) {
            for (int r0 = 0; r0 < R; r0 += 4) {
                const float *pr = p + r0 * TILE;
                float *o = acc + (int64_t)r0 * D;
                switch (R - r0 < 4 ? R - r0 : 4) {
                    case 1: pv_rows(1, D, n, pr, vf, d0, o); break;
                    case 2: pv_rows(2, D, n, pr, vf, d0, o); break;
                    case 3: pv_rows(3, D, n, pr, vf, d0, o); break;
                    default: pv_rows(4, D, n, pr, vf, d0, o); break;
                }
            }
        }
        return;
    }
#endif
    for (int r = 0; r < R; r++)
        for (int i = 0; i < n; i++) {
            const float *v = vf + (int64_t)i * D;
            float w = p[r * TILE + i], *ar = acc + (int64_t)r * D;
#pragma omp simd
            for (int d = 0; d < D; d++) ar[d] += w * v[d];
        }
}

/* Fold one tile of n keys' scores sc [R][TILE] into the running softmax of R rows: sc becomes
 * the tile's probabilities (0 where masked), acc is rescaled if the max grew; the caller then
 * adds p x values.  first_new / T: tile key i (absolute index j0 + i in
 * its source) is causal-masked for row r when j0 + i > first_new + r % T (first_new < 0:
 * nothing masked). */
static void fold(int R, int D, int T, int n, float *sc, int64_t j0,
                 int64_t first_new, float *m, float *l, float *acc) {
    for (int r = 0; r < R; r++) {
        float *s = sc + r * TILE;
        int visible = n;
        if (first_new >= 0) {
            int64_t v = first_new + r % T - j0 + 1;
            visible = v < 0 ? 0 : (v < n ? (int)v : n);
        }
        for (int i = visible; i < n; i++) s[i] = 0.f;
        if (visible == 0) continue;
        float mt = m[r];
        for (int i = 0; i < visible; i++) mt = s[i] > mt ? s[i] : mt;
        if (mt > m[r]) {
            float alpha = expf(m[r] - mt), *a = acc + (int64_t)r * D;
            l[r] *= alpha;
#pragma omp simd
            for (int d = 0; d < D; d++) a[d] *= alpha;
            m[r] = mt;
        }
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < visible; i++) { s[i] = expf(s[i] - mt); sum += s[i]; }
        l[r] += sum;
    }
}

#if defined(__AVX512F__)
/* 16 values of the KV dtype at element offset off -> float32. */
static inline __m512 load16(const void *base, int64_t off, int kv) {
    if (kv == KV_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + off)));
    if (kv == KV_BF16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + off)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    return _mm512_loadu_ps((const float *)base + off);
}

/* Dense tile, scores: sc[r][i] = scale * q[r] . k[i] for n keys at element offset k0 (D apart). */
static inline __attribute__((always_inline)) void dense_scores_rows(
        int rn, int D, int n, const float *q, const void *k, int64_t k0, int kv, float scale,
        float *sc) {
    for (int i = 0; i < n; i++) {
        __m512 t[8];
        for (int r = 0; r < rn; r++) t[r] = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16) {
            __m512 kk = load16(k, k0 + (int64_t)i * D + d, kv);
            for (int r = 0; r < rn; r++) t[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * D + d), kk, t[r]);
        }
        for (int r = 0; r < rn; r++) sc[r * TILE + i] = _mm512_reduce_add_ps(t[r]) * scale;
    }
}

static void dense_scores(int R, int D, int n, const float *q, const void *k, int64_t k0, int kv,
                         float scale, float *sc) {
    for (int r0 = 0; r0 < R; r0 += 8) {
        const float *a = q + r0 * D;
        float *o = sc + r0 * TILE;
        switch (R - r0 < 8 ? R - r0 : 8) {
            case 1: dense_scores_rows(1, D, n, a, k, k0, kv, scale, o); break;
            case 2: dense_scores_rows(2, D, n, a, k, k0, kv, scale, o); break;
            case 3: dense_scores_rows(3, D, n, a, k, k0, kv, scale, o); break;
            case 4: dense_scores_rows(4, D, n, a, k, k0, kv, scale, o); break;
            case 5: dense_scores_rows(5, D, n, a, k, k0, kv, scale, o); break;
            case 6: dense_scores_rows(6, D, n, a, k, k0, kv, scale, o); break;
            case 7: dense_scores_rows(7, D, n, a, k, k0, kv, scale, o); break;
            default: dense_scores_rows(8, D, n, a, k, k0, kv, scale, o); break;
        }
    }
}

/* Dense tile, values: acc [R][D] += p [R][TILE] x v[n][D] read straight from the KV dtype. */
static inline __attribute__((always_inline)) void dense_pv_rows(
        int rn, int D, int n, const float *p, const void *v, int64_t v0, int kv, int d0,
        float *acc) {
    __m512 a[4], e[4];  /* two partial sums per row (even / odd tokens): FMA latency */
    for (int k = 0; k < rn; k++) { a[k] = _mm512_loadu_ps(acc + (int64_t)k * D + d0); e[k] = _mm512_setzero_ps(); }
    int i = 0;
    for (; i + 1 < n; i += 2) {
        __m512 x = load16(v, v0 + (int64_t)i * D + d0, kv);
        __m512 x1 = load16(v, v0 + (int64_t)(i + 1) * D + d0, kv);
        for (int k = 0; k < rn; k++) {
            a[k] = _mm512_fmadd_ps(_mm512_set1_ps(p[k * TILE + i]), x, a[k]);
            e[k] = _mm512_fmadd_ps(_mm512_set1_ps(p[k * TILE + i + 1]), x1, e[k]);
        }
    }
    if (i < n) {
        __m512 x = load16(v, v0 + (int64_t)i * D + d0, kv);
        for (int k = 0; k < rn; k++) a[k] = _mm512_fmadd_ps(_mm512_set1_ps(p[k * TILE + i]), x, a[k]);
    }
    for (int k = 0; k < rn; k++) _mm512_storeu_ps(acc + (int64_t)k * D + d0, _mm512_add_ps(a[k], e[k]));
}

static void dense_pv(int R, int D, int n, const float *p, const void *v, int64_t v0, int kv,
                     float *acc) {
    for (int d0 = 0; d0 < D; d0 += 16)
        for (int r0 = 0; r0 < R; r0 += 4) {
            const float *pr = p + r0 * TILE;
            float *o = acc + (int64_t)r0 * D;
            switch (R - r0 < 4 ? R - r0 : 4) {
                case 1: dense_pv_rows(1, D, n, pr, v, v0, kv, d0, o); break;
                case 2: dense_pv_rows(2, D, n, pr, v, v0, kv, d0, o); break;
                case 3: dense_pv_rows(3, D, n, pr, v, v0, kv, d0, o); break;
                default: dense_pv_rows(4, D, n, pr, v, v0, kv, d0, o); break;
            }
        }
}
#endif

/* Ask for [p, p + bytes) ahead of use: one core alone does not keep enough loads in flight. */
static inline void prefetch(const void *p, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 0, 3);
}

/* Merge per-item partial states (item i covers KV head head_of[i]) into the global state. */
static void merge(int K, int R, int D, int items, const int *head_of, const float *pm,
                  const float *pl, const float *pacc, float *m, float *l, float *acc) {
    for (int it = 0; it < items; it++) {
        int h = head_of[it];
        for (int r = 0; r < R; r++) {
            float mi = pm[(int64_t)it * R + r];
            if (mi <= NEG) continue;
            int64_t g = (int64_t)h * R + r;
            float mn = mi > m[g] ? mi : m[g];
            float a = expf(m[g] - mn), b = expf(mi - mn);
            l[g] = l[g] * a + pl[(int64_t)it * R + r] * b;
            float *dst = acc + g * D;
            const float *src = pacc + ((int64_t)it * R + r) * D;
            for (int d = 0; d < D; d++) dst[d] = dst[d] * a + src[d] * b;
            m[g] = mn;
        }
    }
}

#if defined(__AVX512F__)
static inline __m512 widen16(__m128i c) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c)); }

/* The key scales of one group folded into the queries: qs[r][d] = q[r][d] * s[d] * scale, and
 * qb[r] = scale * sum_d q[r][d] * z[d] (s, z of channel d at s16[d * gk], z16[d * gk]). */
static void fold_key_scales(int R, int D, const float *q, const uint16_t *s16, const uint16_t *z16,
                            int gk, float scale, float *qs, float *qb) {
    float s[D], z[D];
    for (int d = 0; d < D; d++) { s[d] = f16_to_f32(s16[(int64_t)d * gk]); z[d] = f16_to_f32(z16[(int64_t)d * gk]); }
    for (int r = 0; r < R; r++) {
        const float *qr = q + (int64_t)r * D;
        float b = 0.f;
        for (int d = 0; d < D; d++) { qs[r * D + d] = qr[d] * s[d] * scale; b += qr[d] * z[d]; }
        qb[r] = b * scale;
    }
}

/* Scores of R rows for 16 tokens of one key group: sc[r][i0 .. i0 + 15] = qs[r] . c + qb[r],
 * codes of channel d at code index code0 + d * bt. */
static inline __attribute__((always_inline)) void key_rows16(
        int rn, int D, const float *qs, const float *qb, const uint8_t *kc, int64_t code0, int bt,
        int bits, float *sc) {
    __m512 o[8], e[8];  /* two partial sums per row (even / odd channels): FMA latency */
    for (int k = 0; k < rn; k++) { o[k] = _mm512_set1_ps(qb[k]); e[k] = _mm512_setzero_ps(); }
    for (int d = 0; d < D; d += 2) {  /* D is a multiple of 16 */
        __m512 c = widen16(codes16(kc, code0 + (int64_t)d * bt, bits));
        __m512 c1 = widen16(codes16(kc, code0 + (int64_t)(d + 1) * bt, bits));
        for (int k = 0; k < rn; k++) {
            o[k] = _mm512_fmadd_ps(_mm512_set1_ps(qs[k * D + d]), c, o[k]);
            e[k] = _mm512_fmadd_ps(_mm512_set1_ps(qs[k * D + d + 1]), c1, e[k]);
        }
    }
    for (int k = 0; k < rn; k++) _mm512_storeu_ps(sc + k * TILE, _mm512_add_ps(o[k], e[k]));
}

static void key_scores16(int R, int D, const float *qs, const float *qb, const uint8_t *kc,
                         int64_t code0, int bt, int bits, float *sc, int i0) {
    for (int r0 = 0; r0 < R; r0 += 8) {  /* a constant row count per case: registers */
        const float *a = qs + r0 * D, *b = qb + r0;
        float *o = sc + r0 * TILE + i0;
        switch (R - r0 < 8 ? R - r0 : 8) {
            case 1: key_rows16(1, D, a, b, kc, code0, bt, bits, o); break;
            case 2: key_rows16(2, D, a, b, kc, code0, bt, bits, o); break;
            case 3: key_rows16(3, D, a, b, kc, code0, bt, bits, o); break;
            case 4: key_rows16(4, D, a, b, kc, code0, bt, bits, o); break;
            case 5: key_rows16(5, D, a, b, kc, code0, bt, bits, o); break;
            case 6: key_rows16(6, D, a, b, kc, code0, bt, bits, o); break;
            case 7: key_rows16(7, D, a, b, kc, code0, bt, bits, o); break;
            default: key_rows16(8, D, a, b, kc, code0, bt, bits, o); break;
        }
    }
}

static inline __attribute__((always_inline)) void value_rows(
        int rn, int D, int n, const float *ps, const float *pz, const uint8_t *vc, int64_t row0,
        int bits, int d, float *acc) {
    __m512 a[4], e[4];  /* two partial sums per row (even / odd tokens): FMA latency */
    for (int k = 0; k < rn; k++) {
        a[k] = _mm512_add_ps(_mm512_loadu_ps(acc + (int64_t)k * D + d), _mm512_set1_ps(pz[k]));
        e[k] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + 1 < n; i += 2) {
        __m512 v = widen16(codes16(vc, (row0 + i) * D + d, bits));
        __m512 v1 = widen16(codes16(vc, (row0 + i + 1) * D + d, bits));
        for (int k = 0; k < rn; k++) {
            a[k] = _mm512_fmadd_ps(_mm512_set1_ps(ps[k * TILE + i]), v, a[k]);
            e[k] = _mm512_fmadd_ps(_mm512_set1_ps(ps[k * TILE + i + 1]), v1, e[k]);
        }
    }
    if (i < n) {
        __m512 v = widen16(codes16(vc, (row0 + i) * D + d, bits));
        for (int k = 0; k < rn; k++) a[k] = _mm512_fmadd_ps(_mm512_set1_ps(ps[k * TILE + i]), v, a[k]);
    }
    for (int k = 0; k < rn; k++) _mm512_storeu_ps(acc + (int64_t)k * D + d, _mm512_add_ps(a[k], e[k]));
}

/* acc [R][D] += sum over the tile's n tokens of p[r][i] * (c[i] * s[i] + z[i]), channel group by
 * channel group: (p * s) x codes, plus sum p * z.  Token i's codes at (row0 + i) * D, its scale
 * and zero of channel group g at s16[i * gv + g], z16[i * gv + g]. */
static void value_fold(int R, int D, int n, const float *p, const uint8_t *vc, int64_t row0,
                       int bits, int group, int gv, const uint16_t *s16, const uint16_t *z16,
                       float *acc) {
    float ps[R * TILE], pz[R], sf[TILE], zf[TILE];
    for (int g = 0; g < gv; g++) {
        int d0 = g * group, d1 = d0 + group < D ? d0 + group : D;
        for (int i = 0; i < n; i++) {
            sf[i] = f16_to_f32(s16[(int64_t)i * gv + g]);
            zf[i] = f16_to_f32(z16[(int64_t)i * gv + g]);
        }
        for (int r = 0; r < R; r++) {
            float b = 0.f;
            for (int i = 0; i < n; i++) {
                float w = p[r * TILE + i];
                ps[r * TILE + i] = w * sf[i];
                b += w * zf[i];
            }
            pz[r] = b;
        }
        for (int d = d0; d < d1; d += 16) {
            for (int r0 = 0; r0 < R; r0 += 4) {
                const float *a = ps + r0 * TILE, *b = pz + r0;
                float *o = acc + (int64_t)r0 * D;
                switch (R - r0 < 4 ? R - r0 : 4) {
                    case 1: value_rows(1, D, n, a, b, vc, row0, bits, d, o); break;
                    case 2: value_rows(2, D, n, a, b, vc, row0, bits, d, o); break;
                    case 3: value_rows(3, D, n, a, b, vc, row0, bits, d, o); break;
                    default: value_rows(4, D, n, a, b, vc, row0, bits, d, o); break;
                }
            }
        }
    }
}
#endif

void attend_init(int K, int R, int D, float *m, float *l, float *acc) {
    for (int64_t i = 0; i < (int64_t)K * R; i++) { m[i] = NEG; l[i] = 0.f; }
    memset(acc, 0, sizeof(float) * (size_t)K * R * D);
}

void attend_finish(int K, int R, int D, const float *l, const float *acc, float *out) {
    for (int64_t g = 0; g < (int64_t)K * R; g++) {
        float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
        for (int d = 0; d < D; d++) out[g * D + d] = acc[g * D + d] * inv;
    }
}

/* Split ntiles tiles of each of K heads into work items of `per` tiles. */
static int plan(int K, int64_t ntiles, int64_t *per) {
    int threads = omp_get_max_threads();
    int64_t want = 4 * (int64_t)threads;          /* items in all, for balance */
    int64_t chunks = (want + K - 1) / K;
    if (chunks > ntiles) chunks = ntiles;
    if (chunks < 1) chunks = 1;
    *per = (ntiles + chunks - 1) / chunks;
    return (int)((ntiles + *per - 1) / *per);
}

/* Dense source: keys/values [K, *, D] at k, v (element strides head_stride between heads, D
 * between tokens), tokens 0..S-1 of them; tokens >= first_new are the new ones (causal). */
void attend_dense(int K, int R, int D, int T, const float *q, int64_t S, const void *k,
                  const void *v, int64_t head_stride, int kv, int64_t first_new, float scale,
                  float *m, float *l, float *acc) {
    if (S <= 0) return;
    int64_t ntiles = (S + TILE - 1) / TILE, per;
    int chunks = plan(K, ntiles, &per), items = K * chunks;
    float *pm = malloc(sizeof(float) * (size_t)items * R * (D + 2));
    float *pl = pm + (int64_t)items * R, *pacc = pl + (int64_t)items * R;
    int *head_of = malloc(sizeof(int) * (size_t)items);
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && ntiles * K >= 8)
    for (int it = 0; it < items; it++) {
        int h = it / chunks, c = it % chunks;
        float kf[TILE * D], vf[TILE * D], sc[R * TILE];
        float *im = pm + (int64_t)it * R, *il = pl + (int64_t)it * R;
        float *ia = pacc + (int64_t)it * R * D;
        head_of[it] = h;
        for (int r = 0; r < R; r++) { im[r] = NEG; il[r] = 0.f; }
        memset(ia, 0, sizeof(float) * (size_t)R * D);
        const float *qh = q + (int64_t)h * R * D;
        for (int64_t t = c * per; t < (c + 1) * per && t < ntiles; t++) {
            int64_t j0 = t * TILE;
            int n = (int)(S - j0 < TILE ? S - j0 : TILE);
            int64_t base = h * head_stride + j0 * D;
            if (t + AHEAD < ntiles && t + AHEAD < (c + 1) * per) {  /* a later tile's K and V */
                int64_t ahead = base + AHEAD * TILE * D, esize = kv == KV_F32 ? 4 : 2;
                int64_t left = S - (j0 + AHEAD * TILE);
                int64_t bytes = (left < TILE ? left : TILE) * D * esize;
                prefetch((const char *)k + ahead * esize, bytes);
                prefetch((const char *)v + ahead * esize, bytes);
            }
#if defined(__AVX512F__)
            if (D % 16 == 0) {  /* straight from the KV dtype, 16 values at a time */
                dense_scores(R, D, n, qh, k, base, kv, scale, sc);
                fold(R, D, T, n, sc, j0, first_new, im, il, ia);
                dense_pv(R, D, n, sc, v, base, kv, ia);
                continue;
            }
#endif
            widen(k, base, n * D, kv, kf);
            widen(v, base, n * D, kv, vf);
            scores(R, D, n, qh, kf, 0, scale, sc);
            fold(R, D, T, n, sc, j0, first_new, im, il, ia);
            pv(R, D, n, sc, vf, ia);
        }
    }
    merge(K, R, D, items, head_of, pm, pl, pacc, m, l, acc);
    free(head_of);
    free(pm);
}

/* Quantized source: n blocks of bt tokens.  Keys per channel: block b's codes for head h,
 * channel d, token t at index (h * D + d) * bt + t of kd + b * kd_stride (bytes), scale / zero
 * at ((h * D + d) * gk + t / group) of ks / kz + b * ks_stride (fp16 elements); values per token:
 * code index (h * bt + t) * D + d, scale ((h * bt + t) * gv + d / group). */
void attend_quant(int K, int R, int D, int T, const float *q, int64_t n, int bt, int bits,
                  int group, const uint8_t *kd, int64_t kd_stride, const uint16_t *ks,
                  const uint16_t *kz, int64_t ks_stride, const uint8_t *vd, int64_t vd_stride,
                  const uint16_t *vs, const uint16_t *vz, int64_t vs_stride, int kv, float scale,
                  float *m, float *l, float *acc) {
    if (n <= 0) return;
    int sub = (bt + TILE - 1) / TILE;                /* tiles per block */
    int gk = (bt + group - 1) / group, gv = (D + group - 1) / group;
    int64_t ntiles = n * sub, per;
    int chunks = plan(K, ntiles, &per), items = K * chunks;
    int fast = bt % 16 == 0 && group % 16 == 0 && D % 16 == 0;
    (void)fast;
    float *pm = malloc(sizeof(float) * (size_t)items * R * (D + 2));
    float *pl = pm + (int64_t)items * R, *pacc = pl + (int64_t)items * R;
    int *head_of = malloc(sizeof(int) * (size_t)items);
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && ntiles * K >= 8)
    for (int it = 0; it < items; it++) {
        int h = it / chunks, c = it % chunks;
        float kt[D * TILE], vf[TILE * D], sc[R * TILE], qs[R * D], qb[R];
        int64_t qs_block = -1;
        int qs_group = -1;
        uint8_t codes[TILE > D ? TILE : D];
        float *im = pm + (int64_t)it * R, *il = pl + (int64_t)it * R;
        float *ia = pacc + (int64_t)it * R * D;
        head_of[it] = h;
        for (int r = 0; r < R; r++) { im[r] = NEG; il[r] = 0.f; }
        memset(ia, 0, sizeof(float) * (size_t)R * D);
        memset(kt, 0, sizeof(kt));
        const float *qh = q + (int64_t)h * R * D;
        for (int64_t t = c * per; t < (c + 1) * per && t < ntiles; t++) {
            int64_t b = t / sub;
            int t0 = (int)(t % sub) * TILE, nt = bt - t0 < TILE ? bt - t0 : TILE;
            const uint8_t *kc = kd + b * kd_stride, *vc = vd + b * vd_stride;
            const uint16_t *ksb = ks + b * ks_stride, *kzb = kz + b * ks_stride;
            const uint16_t *vsb = vs + b * vs_stride, *vzb = vz + b * vs_stride;
            if (t0 == 0 && b + 1 < n && t + sub < (c + 1) * per) {  /* the next block's codes */
                int64_t head_bytes = (int64_t)D * bt * bits / 8;
                prefetch(kc + kd_stride + h * head_bytes, head_bytes);
                prefetch(vc + vd_stride + h * head_bytes, head_bytes);
            }
#if defined(__AVX512F__)
            if (fast) {
                for (int i = 0; i < nt; i += 16) {  /* runs of 16 tokens share a key group */
                    int g = (t0 + i) / group;
                    if (b != qs_block || g != qs_group) {
                        fold_key_scales(R, D, qh, ksb + (int64_t)h * D * gk + g,
                                        kzb + (int64_t)h * D * gk + g, gk, scale, qs, qb);
                        qs_block = b, qs_group = g;
                    }
                    key_scores16(R, D, qs, qb, kc, (int64_t)h * D * bt + t0 + i, bt, bits, sc, i);
                }
                fold(R, D, T, nt, sc, 0, -1, im, il, ia);
                value_fold(R, D, nt, sc, vc, (int64_t)h * bt + t0, bits, group, gv,
                           vsb + ((int64_t)h * bt + t0) * gv, vzb + ((int64_t)h * bt + t0) * gv,
                           ia);
                continue;
            }
#endif
            for (int d = 0; d < D; d++) {  /* keys: channel d's tokens are contiguous */
                int64_t row = (int64_t)h * D + d;
                unpack(kc, row * bt + t0, nt, bits, codes);
                for (int i = 0; i < nt;) {  /* one run per key group the tile crosses */
                    int g = (t0 + i) / group, end = (g + 1) * group - t0;
                    if (end > nt) end = nt;
                    dequant(codes + i, end - i, ksb[row * gk + g], kzb[row * gk + g],
                            kt + d * TILE + i);
                    i = end;
                }
            }
            for (int i = 0; i < nt; i++) {  /* values: token i's channels are contiguous */
                int64_t row = (int64_t)h * bt + t0 + i;
                unpack(vc, row * D, D, bits, codes);
                for (int g = 0; g < gv; g++) {
                    int d0 = g * group, d1 = d0 + group < D ? d0 + group : D;
                    dequant(codes + d0, d1 - d0, vsb[row * gv + g], vzb[row * gv + g],
                            vf + i * D + d0);
                }
            }
            scores(R, D, nt, qh, kt, 1, scale, sc);
            fold(R, D, T, nt, sc, 0, -1, im, il, ia);
            pv(R, D, nt, sc, vf, ia);
        }
    }
    merge(K, R, D, items, head_of, pm, pl, pacc, m, l, acc);
    free(head_of);
    free(pm);
}

/* One dense source, start to finish (the contiguous cache's decode / verify step): out [K, R, D]. */
void attend_dense_once(int K, int R, int D, int T, const float *q, int64_t S, const void *k,
                       const void *v, int64_t head_stride, int kv, int64_t first_new, float scale,
                       float *out) {
    float st[(int64_t)K * R * (D + 2)];
    float *m = st, *l = st + K * R, *acc = st + 2 * K * R;
    attend_init(K, R, D, m, l, acc);
    attend_dense(K, R, D, T, q, S, k, v, head_stride, kv, first_new, scale, m, l, acc);
    attend_finish(K, R, D, l, acc, out);
}
