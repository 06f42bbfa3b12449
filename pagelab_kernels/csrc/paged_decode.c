// Paged decode attention for the CPU path (pagelab_kernels/cpu_native.py builds this with the system C
// compiler and calls it through ctypes; no torch headers, so it builds in about a second).
//
// One new token per sequence attends to its whole context through its block table (paper section
// 4.1). Each sequence (or a range of its KV heads) is one OpenMP task: its query heads are scored
// against every cached key in one pass (grouped-query heads read their shared KV head), softmax in
// fp32, then one pass over the values. Every key and value is read once, in place, from its block: nothing is
// gathered into a contiguous copy.
//
// Layout (pagelab_kernels/reference.py): cache [num_blocks, block_size, num_kv_heads, head_dim] contiguous,
// query and output [num_seqs, num_heads, head_dim] contiguous, block tables [num_seqs, max_blocks]
// int32, context lengths int32. DTYPE: 0 = float32, 1 = bfloat16, 2 = float16.

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch does
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static inline float load(const void* p, long i, int dtype) {
    if (dtype == 1) return bf16_to_f32(((const uint16_t*)p)[i]);
    if (dtype == 2) return (float)((const _Float16*)p)[i];
    return ((const float*)p)[i];
}

static inline void store(void* p, long i, float x, int dtype) {
    if (dtype == 1) ((uint16_t*)p)[i] = f32_to_bf16(x);
    else if (dtype == 2) ((_Float16*)p)[i] = (_Float16)x;
    else ((float*)p)[i] = x;
}

// Convert one head_dim row to fp32: a loop the compiler vectorises for each dtype.
static inline void row_to_f32(const void* base, long offset, int d, int dtype, float* out) {
    if (dtype == 1) {
        const uint16_t* p = (const uint16_t*)base + offset;
        for (int i = 0; i < d; i++) out[i] = bf16_to_f32(p[i]);
    } else if (dtype == 2) {
        const _Float16* p = (const _Float16*)base + offset;
        for (int i = 0; i < d; i++) out[i] = (float)p[i];
    } else {
        memcpy(out, (const float*)base + offset, sizeof(float) * d);
    }
}

// Software prefetch of one token's row of this task's heads in the NEXT block of the sequence, at
// the same offset: a block's rows are contiguous but blocks lie anywhere, and the hardware prefetcher
// stops at every 4 KiB page, so without this each page of a scattered block starts with a DRAM miss.
// Measured at 64 x 512 tokens, 12 x 64 heads, bf16, random blocks, this 2-core EPYC: 19 -> 37 GB/s
// (benchmarks/bench_cpu_ops.py times it from DRAM and cache-hot side by side).
static inline void prefetch_row(const char* p, int bytes) {
    for (int b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);  // read, keep in all levels
}

#ifdef __AVX512BF16__
// bf16 dot product with AVX512-BF16 (vdpbf16ps): pairs of bf16 products accumulated in fp32, no
// conversion of the key row. d must be a multiple of 32.
static inline float dot_bf16(const uint16_t* a, const uint16_t* b, int d) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < d; i += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a + i), (__m512bh)_mm512_loadu_si512(b + i));
    return _mm512_reduce_add_ps(acc);
}
#endif

void paged_decode_attention(const void* query, const void* k_cache, const void* v_cache,
                            const int32_t* block_tables, const int32_t* context_lens, void* out,
                            int num_seqs, int num_heads, int num_kv_heads, int head_dim,
                            int block_size, int max_blocks, float scale, int dtype, int num_threads) {
    const int group = num_heads / num_kv_heads;
    const long token_stride = (long)num_kv_heads * head_dim;  // between tokens of a block
    const int elem = dtype == 0 ? 4 : 2;  // bytes per element
    // A task is one sequence and a contiguous range of its KV heads: its reads of each token are one
    // contiguous run of memory (the heads are adjacent in the cache), so the hardware prefetcher
    // streams them. Heads are split only when there are fewer sequences than threads.
    int splits = num_seqs >= num_threads ? 1 : (num_threads + num_seqs - 1) / num_seqs;
    if (splits > num_kv_heads) splits = num_kv_heads;
    const int heads_per = (num_kv_heads + splits - 1) / splits;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(num_threads)
    for (int s = 0; s < num_seqs; s++) {
        for (int part = 0; part < splits; part++) {
            const int h0 = part * heads_per;
            const int h1 = h0 + heads_per < num_kv_heads ? h0 + heads_per : num_kv_heads;
            if (h0 >= h1) continue;
            const int nq = (h1 - h0) * group;  // query heads of this task
            const int width = (h1 - h0) * head_dim;  // elements read per token
            const int len = context_lens[s];
            const int32_t* table = block_tables + (long)s * max_blocks;
            float* q = malloc(sizeof(float) * nq * head_dim);
            float* acc = calloc((size_t)nq * head_dim, sizeof(float));
            float* scores = malloc(sizeof(float) * nq * (size_t)(len > 0 ? len : 1));
            float* row = malloc(sizeof(float) * width);
            for (int j = 0; j < nq; j++)
                for (int i = 0; i < head_dim; i++)
                    q[j * head_dim + i] =
                        load(query, ((long)s * num_heads + h0 * group + j) * head_dim + i, dtype) * scale;
            // Scores: one pass over the keys.
            for (int t0 = 0; t0 < len; t0 += block_size) {  // block by block: no division per token
                const long first = (long)table[t0 / block_size] * block_size;
                const int n = len - t0 < block_size ? len - t0 : block_size;
                // the next block of keys, or (at the end) the first block of values
                const char* ahead = t0 + block_size < len
                    ? (const char*)k_cache + ((long)table[t0 / block_size + 1] * block_size * token_stride + (long)h0 * head_dim) * elem
                    : (const char*)v_cache + ((long)table[0] * block_size * token_stride + (long)h0 * head_dim) * elem;
#ifdef __AVX512BF16__
                if (dtype == 1 && head_dim % 32 == 0) {
                    const uint16_t* qb = (const uint16_t*)query + ((long)s * num_heads + h0 * group) * head_dim;
                    for (int o = 0; o < n; o++) {
                        prefetch_row(ahead + (long)o * token_stride * elem, width * elem);
                        const uint16_t* kr = (const uint16_t*)k_cache + (first + o) * token_stride + (long)h0 * head_dim;
                        for (int j = 0; j < nq; j++)
                            scores[(long)j * len + t0 + o] =
                                scale * dot_bf16(qb + j * head_dim, kr + (j / group) * head_dim, head_dim);
                    }
                    continue;
                }
#endif
                for (int o = 0; o < n; o++) {
                    prefetch_row(ahead + (long)o * token_stride * elem, width * elem);
                    const long at = (first + o) * token_stride + (long)h0 * head_dim;
                    const float* keys = row;  // fp32 is read in place; half types converted first
                    if (dtype == 0) keys = (const float*)k_cache + at;
                    else row_to_f32(k_cache, at, width, dtype, row);
                    for (int j = 0; j < nq; j++) {
                        const float* qj = q + j * head_dim;
                        const float* kr = keys + (j / group) * head_dim;
                        float dot = 0.f;
                        for (int i = 0; i < head_dim; i++) dot += qj[i] * kr[i];
                        scores[(long)j * len + t0 + o] = dot;
                    }
                }
            }
            // Softmax per query head, in fp32.
            for (int j = 0; j < nq; j++) {
                float* sj = scores + (long)j * len;
                float m = sj[0], sum = 0.f;  // len >= 1; no infinities (built with -ffast-math)
                for (int t = 1; t < len; t++) m = sj[t] > m ? sj[t] : m;
                for (int t = 0; t < len; t++) {
                    sj[t] = expf(sj[t] - m);
                    sum += sj[t];
                }
                float inv = sum > 0.f ? 1.f / sum : 0.f;
                for (int t = 0; t < len; t++) sj[t] *= inv;
            }
            // Weighted values: one pass over the values.
            for (int t0 = 0; t0 < len; t0 += block_size) {
                const long first = (long)table[t0 / block_size] * block_size;
                const int n = len - t0 < block_size ? len - t0 : block_size;
                const char* ahead = t0 + block_size < len
                    ? (const char*)v_cache + ((long)table[t0 / block_size + 1] * block_size * token_stride + (long)h0 * head_dim) * elem
                    : NULL;
                for (int o = 0; o < n; o++) {
                    if (ahead) prefetch_row(ahead + (long)o * token_stride * elem, width * elem);
                    const long at = (first + o) * token_stride + (long)h0 * head_dim;
                    const float* values = row;
                    if (dtype == 0) values = (const float*)v_cache + at;
                    else row_to_f32(v_cache, at, width, dtype, row);
                    for (int j = 0; j < nq; j++) {
                        const float p = scores[(long)j * len + t0 + o];
                        const float* vr = values + (j / group) * head_dim;
                        float* a = acc + j * head_dim;
                        for (int i = 0; i < head_dim; i++) a[i] += p * vr[i];
                    }
                }
            }
            for (int j = 0; j < nq; j++)
                for (int i = 0; i < head_dim; i++)
                    store(out, ((long)s * num_heads + h0 * group + j) * head_dim + i, acc[j * head_dim + i],
                          dtype);
            free(q);
            free(acc);
            free(scores);
            free(row);
        }
    }
}

// Greedy sampling over fp32 logits [rows, vocab]: each row's argmax and the log-probability of it
// (logit - logsumexp), in one pass per row with OpenMP over rows. Replaces a full log-softmax whose
// [rows, vocab] temporaries cost more than the LM head on a CPU.
void greedy_rows(const float* logits, int rows, int vocab, int64_t* tokens, float* logprobs,
                 int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int r = 0; r < rows; r++) {
        const float* x = logits + (long)r * vocab;
        float m = x[0];
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (x[i] > m) {
                m = x[i];
                best = i;
            }
        float sum = 0.f;
        for (int i = 0; i < vocab; i++) sum += expf(x[i] - m);
        tokens[r] = best;
        logprobs[r] = -logf(sum);  // x[best] - (m + log(sum)) with x[best] == m
    }
}

// ---------------------------------------------------------------------------------------------------
// The layer's small element-wise steps, fused, for the CPU path (each replaces several torch ops
// and their temporaries; paged/model_runner.py uses them on a CPU). Rows are split over OpenMP
// threads. Half types round where transformers' modules round, so results match them.

// Store each token's key and value rows at its slot (slot < 0: skip): vLLM's reshape_and_cache.
// k, v: [tokens, row] contiguous; caches: [slots, row]; row = num_kv_heads * head_dim elements.
void write_kv(const void* k, const void* v, void* k_cache, void* v_cache, const int64_t* slots,
              int tokens, int row, int elem, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (tokens > 64)
    for (int t = 0; t < tokens; t++) {
        if (slots[t] < 0) continue;
        const size_t bytes = (size_t)row * elem;
        memcpy((char*)k_cache + slots[t] * bytes, (const char*)k + (size_t)t * bytes, bytes);
        memcpy((char*)v_cache + slots[t] * bytes, (const char*)v + (size_t)t * bytes, bytes);
    }
}

// LLaMA's RMSNorm: out = w * (x * rsqrt(mean(x^2) + eps)), in fp32, the normalised row rounded to
// the input dtype before the weight multiplies it (transformers' LlamaRMSNorm). x, out: [rows, n].
void rms_norm(const void* x, const void* w, void* out, int rows, int n, float eps, int dtype,
              int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows > 16)
    for (int r = 0; r < rows; r++) {
        const long base = (long)r * n;
        if (dtype == 0) {  // fp32: plain loops the compiler vectorises
            const float* xr = (const float*)x + base;
            const float* wr = (const float*)w;
            float* o = (float*)out + base;
            float sq = 0.f;
            for (int i = 0; i < n; i++) sq += xr[i] * xr[i];
            const float k = 1.f / sqrtf(sq / n + eps);
            for (int i = 0; i < n; i++) o[i] = wr[i] * (xr[i] * k);
            continue;
        }
        float ss = 0.f;
        for (int i = 0; i < n; i++) {
            const float a = load(x, base + i, dtype);
            ss += a * a;
        }
        const float inv = 1.f / sqrtf(ss / n + eps);
        for (int i = 0; i < n; i++) {
            float y = load(x, base + i, dtype) * inv;
            if (dtype == 1) y = bf16_to_f32(f32_to_bf16(y));
            else if (dtype == 2) y = (float)(_Float16)y;
            store(out, base + i, load(w, i, dtype) * y, dtype);
        }
    }
}

// SwiGLU's gate: out = silu(gate) * up, where x = [gate | up] per row ([rows, 2n]) and out is
// [rows, n]; silu's result rounded to the dtype before the product (torch's two ops).
void silu_and_mul(const void* x, void* out, int rows, int n, int dtype, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows > 16)
    for (int r = 0; r < rows; r++) {
        const long in = (long)r * 2 * n, o = (long)r * n;
        if (dtype == 0) {  // fp32: a plain loop, vectorised with glibc's vector expf
            const float* g = (const float*)x + in;
            const float* u = g + n;
            float* y = (float*)out + o;
            for (int i = 0; i < n; i++) y[i] = g[i] / (1.f + expf(-g[i])) * u[i];
            continue;
        }
        for (int i = 0; i < n; i++) {
            const float g = load(x, in + i, dtype);
            float s = g / (1.f + expf(-g));
            if (dtype == 1) s = bf16_to_f32(f32_to_bf16(s));
            else if (dtype == 2) s = (float)(_Float16)s;
            store(out, o + i, s * load(x, in + n + i, dtype), dtype);
        }
    }
}

// LLaMA's rotary embedding in place on `heads` rows of d per token: x*cos + rotate_half(x)*sin, where
// rotate_half(x) = [-x[d/2:], x[:d/2]] (transformers' apply_rotary_pos_emb; each product and the sum
// rounded to the dtype as its three torch ops are). x: token t's heads start at t * row_stride
// (the query or key part of the fused q/k/v output); cos, sin: [tokens, d].
void rotary(void* x, long row_stride, int tokens, int heads, int d, const void* cos, const void* sin,
            int dtype, int num_threads) {
    const int half = d / 2;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (tokens > 16)
    for (int t = 0; t < tokens; t++) {
        for (int h = 0; h < heads; h++) {
            const long base = (long)t * row_stride + (long)h * d;
            float a[512];  // the row before rotation (d <= 512)
            if (dtype == 0) {  // fp32: the two halves as plain loops
                float* r = (float*)x + base;
                const float* c = (const float*)cos + (long)t * d;
                const float* sn = (const float*)sin + (long)t * d;
                memcpy(a, r, sizeof(float) * d);
                for (int i = 0; i < half; i++) r[i] = a[i] * c[i] - a[i + half] * sn[i];
                for (int i = half; i < d; i++) r[i] = a[i] * c[i] + a[i - half] * sn[i];
                continue;
            }
            for (int i = 0; i < d; i++) a[i] = load(x, base + i, dtype);
            for (int i = 0; i < d; i++) {
                const float c = load(cos, (long)t * d + i, dtype), s = load(sin, (long)t * d + i, dtype);
                float p = a[i] * c, r = (i < half ? -a[i + half] : a[i - half]) * s;
                if (dtype == 1) {
                    p = bf16_to_f32(f32_to_bf16(p));
                    r = bf16_to_f32(f32_to_bf16(r));
                } else if (dtype == 2) {
                    p = (float)(_Float16)p;
                    r = (float)(_Float16)r;
                }
                store(x, base + i, p + r, dtype);
            }
        }
    }
}
