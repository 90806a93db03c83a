/* The integer engine's x86-64 kernel: a chain of quantized layers, bit-exact, on AVX2, AVX-512 VNNI or AMX.
 *
 * Built by `pip install` (setup.py) or, failing that, by hailopipe/engine/native.py on first use, and
 * loaded by native.py; the math is derived in hailopipe/quantization/arithmetic.py.  Per layer,
 * with x[k] = q_x[k] - s the stored input (s = z_x for 8-bit inputs, 0 for 16-bit ones, see below):
 *
 *     acc[c] = b[c] + sum_k x[k] q_w[k, c],   b[c] = q_b[c] - (z_x - s) sum_k q_w[k, c]   (3), in int32
 *     q_y[c] = clamp(z_y + ((acc[c] m0[c] + 2^(e[c]-1)) >> e[c]), lo, hi)                 (5), in int64
 *
 * engine.py only hands a layer to this kernel after proving |b| + max|x| sum_k |q_w| < 2^31 for every
 * output channel, so no int32 partial sum can overflow whatever the input.
 *
 * Zeros: with s = z_x, a real 0 (a dark pixel, a ReLU output at its floor) is stored as x = 0 and
 * contributes nothing, so for each register tile the kernel lists the input pairs that are nonzero in
 * any of its rows and sums over those only (when at least a fifth are zero; otherwise it runs the
 * plain loop).  Exact for every input; on MNIST digits (81% dark pixels) it skips about 60% of the
 * first layer's pairs in a 4-row tile and 78% for a single image.  The layer before writes its
 * output already shifted, q_y - s_next (`add`, `lo`, `hi` of the struct); the last layer writes q_y.
 *
 * Products: activations are int16 in memory, weights int8 (engine.py sends only 8-bit-weight layers
 * here), sign-extended to int16 as they are loaded, which halves the weight bytes a single image
 * streams through.  AVX2's vpmaddwd multiplies 16 pairs of int16 and adds neighbouring products
 * into 8 int32 lanes: 16 multiply-adds per instruction, two instructions per cycle on current
 * cores, twice the rate of float32 FMA.  The weights are packed so that one 32-byte run holds, for
 * 16 output channels, the two weights of an input pair (k, k+1):
 *     packed[cb][j][c][t] = w[2j + t][16 cb + c]      (cb: block of 16 channels, j: input pair)
 * and the activation pair (x[2j], x[2j+1]) is broadcast as one 32-bit value.  A register tile holds
 * MR rows x 16 channels of int32 accumulators (rows left over from a multiple of MR: 1 row x 32).
 * On CPUs with AVX-512 BW and VNNI (`qk_paths`; the caller picks the path per call) the same
 * products run as vpdpwssd on 64-byte registers (`tile512`): one instruction multiplies a broadcast
 * pair by the 32 weights of a block and adds both products into its 16 int32 accumulators, and a
 * tile holds MR rows x 32 channels.  The sums are the same integers, so the bits are the same.
 * With AMX (PATH_AMX, where the CPU has AMX-INT8 and the OS grants the tile state), a layer with
 * 8-bit inputs runs as tile products instead (`layer_amx`: u8 inputs shifted to 0..255 times the
 * int8 weights, 16 rows x 64 inputs x 16 channels per instruction, no zero skipping); its other
 * layers run as on the AVX-512 path.
 *
 * Requantization, 8 channels at a time: vpmuldq gives the exact 64-bit products of the even lanes
 * (and, after a 32-bit shift, of the odd ones); AVX2 has no 64-bit arithmetic right shift, so
 * y >> e is computed as ((y ^ m) >>> e) ^ m with m = (y < 0 ? -1 : 0), which is identical.  The
 * per-channel constants m0, 2^(e-1) and e are stored by engine.py in the order c0 c2 c4 c6 c1 c3 c5 c7
 * within each group of 8, so that each is one load.
 *
 * Spatial layers (a convolutional network: conv, max pool, then dense layers after the flatten):
 * an image is H x W positions of `ldi` stored int16 channels, position-major (NHWC).  A conv layer
 * gathers, for CH output positions at a time, the kh x kw taps of each into one patch row of Kp
 * (im2col: the kernel's [kh, kw, cin] order, a pad's value `pad`, zeros to Kp) and runs them
 * through `layer` as rows of a dense layer of the conv's kernel matrix; a pad stored as z_x - s
 * is the real 0 of SAME padding (0 itself for 8-bit inputs, whose products are skipped).  A max
 * pool takes the largest stored value of each window, 16 channels per instruction: exact, for
 * max commutes with the shift by s (a pool keeps its input's qparams); its SAME pads hold the
 * smallest stored value, never above a real input.  The first dense layer after them reads each
 * image's positions x C channels as one row (the flatten, compacted from the padded channels).
 * A chunk is then `ch_imgs` images (so that its largest buffer stays near CH rows of the widest
 * dense layer), and the network's output, if spatial, is stored as positions x C.
 *
 * Rows are processed in chunks of CH: a chunk runs through every layer while its activations (int16,
 * at most CH x widest layer) stay in cache, so the memory used beyond the caller's input and output
 * arrays is two such buffers and the pair lists, per thread.  Chunks are shared among `nthreads`
 * threads (the caller's plus nthreads - 1 pthreads started for the call and joined before it
 * returns, so no thread outlives a call and fork stays safe; the calling thread keeps its memory for
 * its next call).
 */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MR 4  /* rows per register tile */
#define CH 32 /* rows per chunk */

typedef struct {
    int32_t K, C;   /* true input and output widths */
    int32_t Kp, Cp; /* padded: Kp = the previous layer's Cp (or the input width rounded to 16), Cp = C rounded to 16 */
    const int8_t *w;                   /* packed, see above */
    const int32_t *bias;                /* [Cp] b */
    const int64_t *m0, *rnd, *shift;    /* [Cp], even/odd order, see above */
    int32_t add, lo, hi; /* stored output = clamp(((acc m0 + 2^(e-1)) >> e) + add, lo, hi) */
    int32_t in_sub;      /* layer 0 only: stored input = q - in_sub */
    /* Convolutional networks (see "Spatial layers" above); a dense layer has kind DENSE, the rest 0. */
    int32_t kind;                /* DENSE, CONV or MAXPOOL */
    int32_t H, W, Ci, ldi;       /* input image: H x W positions of ldi int16 (Ci true channels) */
    int32_t OH, OW;              /* output positions */
    int32_t kh, kw, sh, sw, dh, dw, pt, pl; /* window, strides, dilations, top/left pads */
    int32_t pad;                 /* the stored value of a pad: conv z_x - s, max pool qmin - s */
    /* The AMX path (see "AMX" above), for a layer with 8-bit inputs; w4 is NULL otherwise. */
    const int8_t *w4;            /* packed for the tiles: [Cp/16][Ka/64][16][16][4] */
    const int32_t *bias_u;       /* [Cp] b - uoff sum_k q_w[k, c]: the constant for u = x + uoff */
    int32_t uoff, Ka;            /* u = x + uoff = q - qmin in 0..255; Ka = Kp rounded up to 64 */
} qk_layer;

enum { DENSE = 0, CONV = 1, MAXPOOL = 2 };

/* Input and output kinds: the storage integers q, or the unsigned stream values u = q - qmin. */
enum { Q8 = 0, U8 = 1, Q16 = 2, U16 = 3 };

enum { PATH_AVX2 = 0, PATH_AVX512_VNNI = 1, PATH_AMX = 2 }; /* qk_run's `path` */

#ifndef QK_SOURCE
#define QK_SOURCE "" /* an install-time build (setup.py) names the hash of the source it was built from */
#endif
const char *qk_source(void) { return QK_SOURCE; }

/* The paths this CPU runs, as bits (1 << PATH_...), 0 without AVX2 (the kernel cannot run): AVX2;
   AVX-512 VNNI where the CPU has the AVX-512 foundation, byte/word and VNNI extensions (Ice Lake and
   later Xeons, Zen 4); AMX where it also has AMX-INT8 and the OS grants the tiles (Sapphire Rapids on). */
int qk_paths(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) return 0;
    const int vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vnni");
    unsigned a, b, c, d;
    /* AMX-TILE and AMX-INT8 (CPUID.7.0:EDX bits 24, 25), and the kernel's leave to use the tile
       data (Linux's arch_prctl; refused where the OS or the hypervisor does not save the tiles) */
    const int amx = vnni && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 3) == 3 &&
                    syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    return 1 << PATH_AVX2 | (vnni ? 1 << PATH_AVX512_VNNI : 0) | (amx ? 1 << PATH_AMX : 0);
}

__attribute__((target("avx2"))) static inline __m256i requant8(__m256i acc, const qk_layer *L, int c) {
#define LOAD64(p) _mm256_loadu_si256((const __m256i *)(p))
    __m256i m_ev = LOAD64(L->m0 + c), m_od = LOAD64(L->m0 + c + 4);
    __m256i r_ev = LOAD64(L->rnd + c), r_od = LOAD64(L->rnd + c + 4);
    __m256i e_ev = LOAD64(L->shift + c), e_od = LOAD64(L->shift + c + 4);
#undef LOAD64
    __m256i zero = _mm256_setzero_si256();
    __m256i p_ev = _mm256_add_epi64(_mm256_mul_epi32(acc, m_ev), r_ev);
    __m256i p_od = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), m_od), r_od);
    __m256i m_neg_ev = _mm256_cmpgt_epi64(zero, p_ev), m_neg_od = _mm256_cmpgt_epi64(zero, p_od);
    __m256i y_ev = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(p_ev, m_neg_ev), e_ev), m_neg_ev);
    __m256i y_od = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(p_od, m_neg_od), e_od), m_neg_od);
    __m256i y = _mm256_blend_epi32(y_ev, _mm256_slli_epi64(y_od, 32), 0xAA); /* low 32 bits of each */
    y = _mm256_add_epi32(y, _mm256_set1_epi32(L->add));
    return _mm256_min_epi32(_mm256_max_epi32(y, _mm256_set1_epi32(L->lo)), _mm256_set1_epi32(L->hi));
}

/* mr rows x nb blocks of 16 channels from block cb on, of one layer, summing over the input pairs j
   in pairs[0..count) (the others are zero in all mr rows); mr and nb are constants after inlining:
   (MR, 1) for the bulk of a batch, (1, 2) for leftover rows, which shares each broadcast. */
__attribute__((target("avx2"), always_inline)) static inline void tile(const qk_layer *L, const int16_t *x, int ldx,
                                                                       int16_t *y, int ldy, int cb, const int mr,
                                                                       const int nb, const uint16_t *pairs,
                                                                       int count) {
    const int8_t *w = L->w + (size_t)cb * (L->Kp / 2) * 32;
    const size_t block = (size_t)(L->Kp / 2) * 32;
    __m256i acc[MR][4];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 2 * nb; v++) acc[r][v] = _mm256_loadu_si256((const __m256i *)(L->bias + cb * 16 + v * 8));
    /* pairs == NULL: all pairs, in order (cheaper per pair when few are zero) */
    for (int i = 0; i < count; i++) {
        const int j = pairs ? pairs[i] : i;
        __m256i wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < 2 * nb; v++)
            wv[v] = _mm256_cvtepi8_epi16(
                _mm_loadu_si128((const __m128i *)(w + (v / 2) * block + j * 32 + (v % 2) * 16)));
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            int32_t pair;
            memcpy(&pair, x + (size_t)r * ldx + 2 * j, 4);
            __m256i xb = _mm256_set1_epi32(pair);
#pragma GCC unroll 4
            for (int v = 0; v < 2 * nb; v++) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(xb, wv[v]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
        for (int v = 0; v < 2 * nb; v += 2) {
            const int c = cb * 16 + v * 8;
            /* the values are within [lo, hi], so packing to int16 never saturates */
            __m256i q = _mm256_packs_epi32(requant8(acc[r][v], L, c), requant8(acc[r][v + 1], L, c + 8));
            _mm256_storeu_si256((__m256i *)(y + (size_t)r * ldy + c), _mm256_permute4x64_epi64(q, 0xD8));
        }
}

/* The same tile with AVX-512 VNNI (the path PATH_AVX512_VNNI): one 64-byte register holds the 16
   channels of a block, whose 32 packed weights of an input pair widen to 32 int16 in one vpmovsxbw,
   and vpdpwssd multiplies them by the broadcast pair and adds both products into the int32
   accumulators in one instruction (32 multiply-adds; AVX2 needs four instructions for as many).  The
   same products and the same sums, hence the same bits.  nb (up to 4) counts blocks of 16 channels here. */
#define TARGET512 __attribute__((target("avx2,avx512f,avx512bw,avx512vnni"), always_inline)) static inline
TARGET512 void tile512(const qk_layer *L, const int16_t *x, int ldx, int16_t *y, int ldy, int cb, const int mr,
                       const int nb, const uint16_t *pairs, int count) {
    const int8_t *w = L->w + (size_t)cb * (L->Kp / 2) * 32;
    const size_t block = (size_t)(L->Kp / 2) * 32;
    __m512i acc[MR][4];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nb; v++) acc[r][v] = _mm512_loadu_si512((const void *)(L->bias + (cb + v) * 16));
    for (int i = 0; i < count; i++) {
        const int j = pairs ? pairs[i] : i;
        __m512i wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nb; v++)
            wv[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + v * block + j * 32)));
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            int32_t pair;
            memcpy(&pair, x + (size_t)r * ldx + 2 * j, 4);
            const __m512i xb = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int v = 0; v < nb; v++) acc[r][v] = _mm512_dpwssd_epi32(acc[r][v], xb, wv[v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nb; v++) {
            const int c = (cb + v) * 16;
            __m256i q = _mm256_packs_epi32(requant8(_mm512_castsi512_si256(acc[r][v]), L, c),
                                           requant8(_mm512_extracti64x4_epi64(acc[r][v], 1), L, c + 8));
            _mm256_storeu_si256((__m256i *)(y + (size_t)r * ldy + c), _mm256_permute4x64_epi64(q, 0xD8));
        }
}

/* Writes the pairs j < kh with a nonzero (x[2j], x[2j+1]) in any of `rows` rows into `pairs`, in
   increasing order, and returns their number, or returns kh without writing when fewer than a fifth
   are zero: then the plain loop over all pairs is cheaper than the list's indirection. */
__attribute__((target("avx2"))) static int nonzero_pairs(const int16_t *x, int ldx, int rows, int kh, uint16_t *pairs) {
    uint8_t masks[kh / 8]; /* kh is a multiple of 8 */
    int n = 0;
    for (int j = 0; j < kh; j += 8) {
        __m256i any = _mm256_setzero_si256();
        for (int r = 0; r < rows; r++)
            any = _mm256_or_si256(any, _mm256_loadu_si256((const __m256i *)(x + (size_t)r * ldx + 2 * j)));
        __m256 zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(any, _mm256_setzero_si256()));
        masks[j / 8] = (uint8_t)~_mm256_movemask_ps(zero);
        n += __builtin_popcount(masks[j / 8]);
    }
    if (5 * n > 4 * kh) return kh;
    n = 0;
    for (int b = 0; b < kh / 8; b++)
        for (unsigned bits = masks[b]; bits; bits &= bits - 1) pairs[n++] = (uint16_t)(8 * b + __builtin_ctz(bits));
    return n;
}

/* One layer for nr <= CH rows; `pairs` has room for (CH / MR + MR) lists of Kp / 2.  The pair lists
   are made once per tile of rows; then every block of 16 channels runs through TILE: MR rows x BULK
   blocks at a time, the rows left over one at a time x LEFT blocks, which shares each broadcast. */
#define DEFINE_LAYER(name, isa, TILE, BULK, LEFT)                                                          \
    __attribute__((target(isa))) static void name(const qk_layer *L, const int16_t *x, int16_t *y, int nr,      \
                                                     uint16_t *pairs) {                                             \
        const int kh = L->Kp / 2, blocks = L->Cp / 16, bulk = nr - nr % MR;                                         \
        int count[CH / MR + MR], t = 0;                                                                             \
        for (int r = 0; r < bulk; r += MR, t++)                                                                     \
            count[t] = nonzero_pairs(x + (size_t)r * L->Kp, L->Kp, MR, kh, pairs + t * kh);                         \
        for (int r = bulk; r < nr; r++, t++) count[t] = nonzero_pairs(x + (size_t)r * L->Kp, L->Kp, 1, kh, pairs + t * kh); \
        const uint16_t *list[CH / MR + MR];                                                                         \
        for (int i = 0; i < t; i++) list[i] = count[i] < kh ? pairs + i * kh : NULL;                               \
        int cb = 0;                                                                                                 \
        for (; cb + BULK <= blocks; cb += BULK)                                                                     \
            for (int r = 0, t = 0; r < bulk; r += MR, t++)                                                          \
                TILE(L, x + (size_t)r * L->Kp, L->Kp, y + (size_t)r * L->Cp, L->Cp, cb, MR, BULK, list[t], count[t]); \
        for (; cb < blocks; cb++)                                                                                   \
            for (int r = 0, t = 0; r < bulk; r += MR, t++)                                                          \
                TILE(L, x + (size_t)r * L->Kp, L->Kp, y + (size_t)r * L->Cp, L->Cp, cb, MR, 1, list[t], count[t]); \
        for (int r = bulk, t = bulk / MR; r < nr; r++, t++) {                                                       \
            const int16_t *xr = x + (size_t)r * L->Kp;                                                             \
            int16_t *yr = y + (size_t)r * L->Cp;                                                                    \
            int c2 = 0;                                                                                             \
            for (; c2 + LEFT <= blocks; c2 += LEFT) TILE(L, xr, L->Kp, yr, L->Cp, c2, 1, LEFT, list[t], count[t]); \
            for (; c2 < blocks; c2++) TILE(L, xr, L->Kp, yr, L->Cp, c2, 1, 1, list[t], count[t]);              \
        }                                                                                                           \
    }

DEFINE_LAYER(layer_avx2, "avx2", tile, 1, 2)
/* a row left over runs 4 blocks at a time: vpdpwssd's 5-cycle latency is on each accumulator's
   chain, so one row needs 4 chains to keep the unit busy (measured: 1 image of 784-128-64-10 took
   4.9 us with 2) */
DEFINE_LAYER(layer_avx512, "avx2,avx512f,avx512bw,avx512vnni", tile512, 2, 4)

/* The AMX path: a layer with 8-bit inputs as tile products, u8 x s8 -> int32 (TDPBUSD, exact: no
   saturation).  The stored input x = q - s is shifted to u = x + uoff = q - qmin, 0..255, its rows
   written as bytes into `abuf` (Ka bytes each, zeros past Kp); the accumulator constant becomes
   bias_u = b - uoff sum_k q_w[k, c], so acc is the same integer.  Per block of 16 channels, the
   rows' tiles (16 rows x 64 inputs) times the block's weight tiles (64 inputs x 16 channels, four
   consecutive inputs of a channel side by side) sum into one or two 16 x 16 int32 tiles, stored to
   `cbuf` and requantized as the other paths do.  No products are skipped. */
#define TARGET_AMX __attribute__((target("avx2,avx512f,avx512bw,avx512vnni,amx-tile,amx-int8")))
typedef struct {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

/* tiles 0-4: C0 C1 A0 A1 B, each 16 rows x 64 bytes.  A static table: GCC 12 drops the stores of a
   configuration built on the stack before ldtilecfg, which it does not see reading them. */
static const tilecfg AMX_CFG __attribute__((aligned(64))) = {
    1, 0, {0}, {64, 64, 64, 64, 64}, {16, 16, 16, 16, 16}};

TARGET_AMX static void amx_begin(void) { _tile_loadconfig(&AMX_CFG); }

TARGET_AMX static void amx_end(void) { _tile_release(); }

#define AMX_ROWS(Ka) (((size_t)32 * (Ka) + 63) / 64 * 64) /* abuf's bytes; cbuf (2 KiB) follows */

TARGET_AMX static void layer_amx(const qk_layer *L, const int16_t *x, int16_t *y, int nr, uint8_t *abuf) {
    const int Ka = L->Ka, kt = Ka / 64, blocks = L->Cp / 16, two = nr > 16;
    int32_t *cbuf = (int32_t *)(abuf + AMX_ROWS(Ka));
    const __m512i off = _mm512_set1_epi16((int16_t)L->uoff);
    for (int r = 0; r < (two ? 32 : 16); r++) {
        uint8_t *a = abuf + (size_t)r * Ka;
        int k = r < nr ? L->Kp : 0;
        if (r < nr)
            for (int k0 = 0; k0 < L->Kp; k0 += 32) {
                const __mmask32 m = L->Kp - k0 >= 32 ? 0xFFFFFFFFu : (1u << (L->Kp - k0)) - 1;
                _mm512_mask_cvtepi16_storeu_epi8(a + k0, m, _mm512_add_epi16(
                    _mm512_maskz_loadu_epi16(m, x + (size_t)r * L->Kp + k0), off));
            }
        memset(a + k, 0, (size_t)(Ka - k));
    }
    for (int cb = 0; cb < blocks; cb++) {
        const int8_t *w = L->w4 + (size_t)cb * kt * 1024;
        _tile_zero(0);
        if (two) _tile_zero(1);
        for (int t = 0; t < kt; t++) {
            _tile_loadd(2, abuf + t * 64, Ka);
            _tile_loadd(4, w + (size_t)t * 1024, 64);
            _tile_dpbusd(0, 2, 4);
            if (two) {
                _tile_loadd(3, abuf + (size_t)16 * Ka + t * 64, Ka);
                _tile_dpbusd(1, 3, 4);
            }
        }
        _tile_stored(0, cbuf, 64);
        if (two) _tile_stored(1, cbuf + 256, 64);
        for (int r = 0; r < nr; r++) {
            const int c = cb * 16;
            const __m512i acc = _mm512_add_epi32(_mm512_loadu_si512((const void *)(cbuf + r * 16)),
                                                 _mm512_loadu_si512((const void *)(L->bias_u + c)));
            __m256i q = _mm256_packs_epi32(requant8(_mm512_castsi512_si256(acc), L, c),
                                           requant8(_mm512_extracti64x4_epi64(acc, 1), L, c + 8));
            _mm256_storeu_si256((__m256i *)(y + (size_t)r * L->Cp + c), _mm256_permute4x64_epi64(q, 0xD8));
        }
    }
}

/* On the AMX path, a few rows (a single image, a chunk's tail) keep the vector tiles, which skip zeros
   and waste no tile rows.  A layer of one block of 16 channels (a small conv) keeps the AVX2 tile on the AVX-512 path: there
   the wide tile does the same instructions' work in fewer, slower ones (measured in
   bench/engine_speed.py: the MNIST CNN ran 8 % slower with it). */
static void layer(const qk_layer *L, const int16_t *x, int16_t *y, int nr, uint16_t *pairs, int path) {
    if (path == PATH_AMX && L->w4 && nr > MR) layer_amx(L, x, y, nr, (uint8_t *)pairs); /* buffers: the lists' room */
    else if (path >= PATH_AVX512_VNNI && L->Cp >= 32) layer_avx512(L, x, y, nr, pairs);
    else layer_avx2(L, x, y, nr, pairs);
}

typedef struct {
    const qk_layer *L;
    int nl, in_kind, out_kind;
    const void *in;
    void *out;
    int64_t n, next_chunk;
    int ch;                                   /* images per chunk (<= CH) */
    size_t buf_bytes, patch_bytes, mem_bytes; /* one activation buffer, the patch rows, a thread's memory */
    int failed;
    int path;                                 /* PATH_AVX2, PATH_AVX512_VNNI or PATH_AMX */
} job_t;

/* int16 values per image of a layer's input and of its output in the chunk buffers */
static int64_t in_img(const qk_layer *L) { return L->kind == DENSE ? L->Kp : (int64_t)L->H * L->W * L->ldi; }
static int out_ld(const qk_layer *L) { return L->kind == MAXPOOL ? L->ldi : L->Cp; }
static int out_channels(const qk_layer *L) { return L->kind == MAXPOOL ? L->Ci : L->C; }
static int64_t out_positions(const qk_layer *L) { return L->kind == DENSE ? 1 : (int64_t)L->OH * L->OW; }

static void load_rows(const job_t *J, int64_t r0, int nr, int16_t *dst) {
    const qk_layer *L0 = &J->L[0];
    const int64_t K = L0->kind == DENSE ? L0->K : (int64_t)L0->H * L0->W * L0->Ci, ld = in_img(L0);
    const int sub = L0->in_sub;
    for (int r = 0; r < nr; r++, dst += ld) {
        const size_t at = (size_t)(r0 + r) * K;
        if (J->in_kind == Q8) {
            const int8_t *s = (const int8_t *)J->in + at;
            for (int64_t k = 0; k < K; k++) dst[k] = (int16_t)(s[k] - sub);
        } else if (J->in_kind == U8) {
            const uint8_t *s = (const uint8_t *)J->in + at;
            for (int64_t k = 0; k < K; k++) dst[k] = (int16_t)(s[k] - 128 - sub);
        } else if (J->in_kind == Q16) {
            const int16_t *s = (const int16_t *)J->in + at;
            for (int64_t k = 0; k < K; k++) dst[k] = (int16_t)(s[k] - sub);
        } else {
            const uint16_t *s = (const uint16_t *)J->in + at;
            for (int64_t k = 0; k < K; k++) dst[k] = (int16_t)((int16_t)(s[k] ^ 0x8000u) - sub);
        }
        memset(dst + K, 0, (size_t)(ld - K) * 2);
    }
}

static void store_rows(const job_t *J, int64_t r0, int nr, const int16_t *src) {
    const qk_layer *L = &J->L[J->nl - 1];
    const int C = out_channels(L), ld = out_ld(L);
    const int64_t P = out_positions(L);
    for (int64_t r = 0; r < nr * P; r++, src += ld) {
        const size_t at = (size_t)(r0 * P + r) * C;
        if (J->out_kind == Q8) {
            int8_t *d = (int8_t *)J->out + at;
            for (int c = 0; c < C; c++) d[c] = (int8_t)src[c];
        } else if (J->out_kind == U8) {
            uint8_t *d = (uint8_t *)J->out + at;
            for (int c = 0; c < C; c++) d[c] = (uint8_t)(src[c] + 128);
        } else if (J->out_kind == Q16) {
            memcpy((int16_t *)J->out + at, src, (size_t)C * 2);
        } else {
            uint16_t *d = (uint16_t *)J->out + at;
            for (int c = 0; c < C; c++) d[c] = (uint16_t)src[c] ^ 0x8000u;
        }
    }
}

/* n int16 values from s to d: whole vectors where n allows (a conv's taps are a few channels each). */
__attribute__((target("avx2"), always_inline)) static inline void copy16(int16_t *d, const int16_t *s, int n) {
    int c = 0;
    for (; c + 16 <= n; c += 16) _mm256_storeu_si256((__m256i *)(d + c), _mm256_loadu_si256((const __m256i *)(s + c)));
    for (; c + 8 <= n; c += 8) _mm_storeu_si128((__m128i *)(d + c), _mm_loadu_si128((const __m128i *)(s + c)));
    for (; c < n; c++) d[c] = s[c];
}

/* One patch row: the kh x kw taps of output position (oh, ow) of image xi; kh, kw and Ci are
   constants where `gather` is inlined for the common 3x3 kernels with 1, 8 or 16 channels. */
__attribute__((target("avx2"), always_inline)) static inline void gather(const qk_layer *L, const int16_t *xi,
                                                                         int16_t *d, int oh, int ow, const int kh,
                                                                         const int kw, const int Ci) {
    const int ld = L->ldi, ih0 = oh * L->sh - L->pt, iw0 = ow * L->sw - L->pl;
    const int inside = ih0 >= 0 && ih0 + (kh - 1) * L->dh < L->H && iw0 >= 0 && iw0 + (kw - 1) * L->dw < L->W;
    if (inside && L->dw == 1 && ld == Ci) { /* each kernel row is contiguous */
        for (int i = 0; i < kh; i++, d += kw * Ci) copy16(d, xi + ((size_t)(ih0 + i * L->dh) * L->W + iw0) * ld, kw * Ci);
        return;
    }
    for (int i = 0; i < kh; i++) {
        const int ih = ih0 + i * L->dh;
        for (int j = 0; j < kw; j++, d += Ci) {
            const int iw = iw0 + j * L->dw;
            if (!inside && (ih < 0 || ih >= L->H || iw < 0 || iw >= L->W))
                for (int c = 0; c < Ci; c++) d[c] = (int16_t)L->pad;
            else
                copy16(d, xi + ((size_t)ih * L->W + iw) * ld, Ci);
        }
    }
}

/* A conv layer on ni images: CH output positions at a time, gathered into patch rows, then `layer`. */
__attribute__((target("avx2"))) static void conv(const qk_layer *L, const int16_t *x, int16_t *y, int ni,
                                                 int16_t *patch, uint16_t *pairs, int path) {
    const int64_t P = (int64_t)L->OH * L->OW, rows = ni * P, image = (int64_t)L->H * L->W * L->ldi;
    const int Ci = L->Ci, K = L->kh * L->kw * Ci, k33 = L->kh == 3 && L->kw == 3;
    for (int r = 0; r < CH; r++) memset(patch + (size_t)r * L->Kp + K, 0, (size_t)(L->Kp - K) * 2);
    int64_t img = 0;
    int oh = 0, ow = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += CH) {
        const int nr = rows - r0 < CH ? (int)(rows - r0) : CH;
        for (int r = 0; r < nr; r++) {
            const int16_t *xi = x + img * image;
            int16_t *d = patch + (size_t)r * L->Kp;
            if (k33 && Ci == 1) gather(L, xi, d, oh, ow, 3, 3, 1);
            else if (k33 && Ci == 8) gather(L, xi, d, oh, ow, 3, 3, 8);
            else if (k33 && Ci == 16) gather(L, xi, d, oh, ow, 3, 3, 16);
            else gather(L, xi, d, oh, ow, L->kh, L->kw, Ci);
            if (++ow == L->OW) {
                ow = 0;
                if (++oh == L->OH) oh = 0, img++;
            }
        }
        layer(L, patch, y + r0 * L->Cp, nr, pairs, path);
    }
}

/* A max pool on ni images: each output starts at the pad value (below every stored input). */
__attribute__((target("avx2"))) static void maxpool(const qk_layer *L, const int16_t *x, int16_t *y, int ni) {
    const int ld = L->ldi, vec = ld - ld % 16;
    for (int img = 0; img < ni; img++) {
        const int16_t *xi = x + (size_t)img * L->H * L->W * ld;
        int16_t *d = y + (size_t)img * L->OH * L->OW * ld;
        for (int oh = 0; oh < L->OH; oh++)
            for (int ow = 0; ow < L->OW; ow++, d += ld) {
                for (int c = 0; c < ld; c++) d[c] = (int16_t)L->pad;
                for (int i = 0; i < L->kh; i++) {
                    const int ih = oh * L->sh + i - L->pt;
                    if (ih < 0 || ih >= L->H) continue;
                    for (int j = 0; j < L->kw; j++) {
                        const int iw = ow * L->sw + j - L->pl;
                        if (iw < 0 || iw >= L->W) continue;
                        const int16_t *s = xi + ((size_t)ih * L->W + iw) * ld;
                        for (int c = 0; c < vec; c += 16)
                            _mm256_storeu_si256((__m256i *)(d + c),
                                                _mm256_max_epi16(_mm256_loadu_si256((const __m256i *)(d + c)),
                                                                 _mm256_loadu_si256((const __m256i *)(s + c))));
                        for (int c = vec; c < ld; c++) d[c] = s[c] > d[c] ? s[c] : d[c];
                    }
                }
            }
    }
}

/* The flatten before the first dense layer: each image's positions x C channels as one row of Kp. */
static void flatten(const qk_layer *prev, const qk_layer *L, const int16_t *x, int16_t *y, int ni) {
    const int C = out_channels(prev), ld = out_ld(prev);
    const int64_t P = out_positions(prev);
    for (int img = 0; img < ni; img++) {
        int16_t *d = y + (size_t)img * L->Kp;
        for (int64_t p = 0; p < P; p++) memcpy(d + p * C, x + ((size_t)img * P + p) * ld, (size_t)C * 2);
        memset(d + P * C, 0, (size_t)(L->Kp - P * C) * 2);
    }
}

static void run_chunks(job_t *J, char *mem) {
    int16_t *a = (int16_t *)mem, *b = (int16_t *)(mem + J->buf_bytes);
    int16_t *patch = (int16_t *)(mem + 2 * J->buf_bytes);
    uint16_t *pairs = (uint16_t *)(mem + 2 * J->buf_bytes + J->patch_bytes);
    const int64_t chunks = (J->n + J->ch - 1) / J->ch;
    if (J->path == PATH_AMX) amx_begin(); /* the tile configuration is per thread */
    for (int64_t ch; (ch = __atomic_fetch_add(&J->next_chunk, 1, __ATOMIC_RELAXED)) < chunks;) {
        const int64_t r0 = ch * J->ch;
        const int nr = (int)(J->n - r0 < J->ch ? J->n - r0 : J->ch);
        int16_t *x = a, *y = b, *t;
        load_rows(J, r0, nr, x);
        for (int i = 0; i < J->nl; i++) {
            const qk_layer *L = &J->L[i];
            if (L->kind == DENSE && i > 0 && J->L[i - 1].kind != DENSE)
                flatten(&J->L[i - 1], L, x, y, nr), t = x, x = y, y = t;
            if (L->kind == CONV) conv(L, x, y, nr, patch, pairs, J->path);
            else if (L->kind == MAXPOOL) maxpool(L, x, y, nr);
            else layer(L, x, y, nr, pairs, J->path);
            t = x, x = y, y = t;
        }
        store_rows(J, r0, nr, x);
    }
    if (J->path == PATH_AMX) amx_end();
}

/* A started thread's memory lives for the call; the caller's is kept per thread for the next call,
   which saves the allocation on every single-image call. */
static void *worker(void *arg) {
    job_t *J = arg;
    char *mem = aligned_alloc(64, J->mem_bytes);
    if (mem) run_chunks(J, mem);
    else __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
    free(mem);
    return NULL;
}

static __thread char *kept;
static __thread size_t kept_bytes;

static void caller_work(job_t *J) {
    if (kept_bytes < J->mem_bytes) {
        free(kept);
        kept = aligned_alloc(64, J->mem_bytes);
        kept_bytes = kept ? J->mem_bytes : 0;
    }
    if (kept) run_chunks(J, kept);
    else __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
}

#define ALIGN64(n) (((size_t)(n) + 63) / 64 * 64)

/* Run n images (rows) of `in` through the nl layers into `out`; 0 on success, -1 if memory ran out.
   A chunk is CH images of a dense network; of a convolutional one, as many (1..CH) as keep its
   largest activation buffer near 128 KiB. */
int qk_run(const qk_layer *L, int nl, const void *in, int in_kind, int64_t n, void *out, int out_kind, int nthreads,
           int path) {
    int64_t widest_img = 0;
    int widest = 0, patch = 0, spatial = 0;
    for (int i = 0; i < nl; i++) {
        const int64_t io = in_img(&L[i]) > out_positions(&L[i]) * out_ld(&L[i]) ? in_img(&L[i])
                                                                                 : out_positions(&L[i]) * out_ld(&L[i]);
        widest_img = io > widest_img ? io : widest_img;
        widest = L[i].Cp > widest ? L[i].Cp : widest;
        if (L[i].kind != MAXPOOL) widest = L[i].Kp > widest ? L[i].Kp : widest;
        if (L[i].kind == CONV) patch = L[i].Kp > patch ? L[i].Kp : patch;
        spatial |= L[i].kind != DENSE;
    }
    int ch = CH;
    if (spatial) {
        const int64_t fit = ((int64_t)1 << 16) / (widest_img > 0 ? widest_img : 1);
        ch = fit < 1 ? 1 : fit > CH ? CH : (int)fit;
    }
    const size_t buf = ALIGN64((size_t)ch * widest_img * 2), patches = ALIGN64((size_t)CH * patch * 2);
    size_t lists = (CH / MR + MR) * (size_t)widest * 2;
    int tiles = 0;
    for (int i = 0; i < nl; i++) /* the AMX path's row bytes and accumulator tiles use the lists' room */
        if (path == PATH_AMX && L[i].w4 && n > MR) {
            tiles = 1;
            if (AMX_ROWS(L[i].Ka) + 2048 > lists) lists = AMX_ROWS(L[i].Ka) + 2048;
        }
    if (path == PATH_AMX && !tiles) path = PATH_AVX512_VNNI; /* no tile products: no tile state to configure */
    job_t J = {L, nl, in_kind, out_kind, in, out, n, 0, ch, buf, patches, 2 * buf + patches + ALIGN64(lists), 0,
               path};
    const int64_t chunks = (n + ch - 1) / ch;
    int extra = nthreads - 1;
    if (extra > chunks / 2) extra = (int)(chunks / 2); /* a thread is worth starting for two chunks or more */
    if (extra > 63) extra = 63;
    pthread_t tid[63];
    int started = 0;
    for (; started < extra; started++)
        if (pthread_create(&tid[started], NULL, worker, &J) != 0) break;
    caller_work(&J);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    return J.failed ? -1 : 0;
}
