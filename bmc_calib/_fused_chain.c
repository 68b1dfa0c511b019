/* The feature chain of bmc_calib.torch_chain for CPU tensors, fused: one pass over the poses
 * for the forward and one for the backward, instead of ~190 ATen kernels.
 *
 * Every operation of the chain is per pose, so the poses are taken W = 4 at a time, one per
 * lane of a vector (GCC/Clang vector extensions): the 63 coordinates of each are read once,
 * every intermediate lives in a per-lane struct (double precision whatever the input dtype),
 * and only the 58 features (forward) or the 63 joint gradients (backward) are written. The
 * backward recomputes the forward's intermediates (cheaper than storing and re-reading
 * them) and then runs the same hand-derived backward as
 * bmc_calib.torch_chain.chain_backward, step by step; the Python module documents the
 * geometry, and tests check both implementations against each other and against
 * bmc_calib.kinematics. A scalar branch is taken only on what all lanes share (the dtype, the
 * normalisation); per-pose choices are selects, so a degenerate pose cannot change another.
 *
 * Layouts (row-major, C-contiguous):
 *   joints    (N, 21, 3)  float32 or float64, canonical joint order
 *   sign      (N,)        the same dtype, +1 or -1 (mirror x), or absent
 *   features  (58, N)     the same dtype; rows as bmc_calib.torch_chain.FEATURE_ROWS
 *   keep      (N,)        uint8 (torch.bool): 1 = not degenerate
 *   grad      (58, N)     the gradient with respect to the features
 *   out       (N, 21, 3)  the gradient with respect to the joints
 *
 * The 34 atan2 of a pose (4 palm angles, 15 flexions, 15 abductions) go through glibc's vector
 * atan2 (libmvec) on x86-64 with GCC, elsewhere through the scalar one. The two loops are
 * compiled twice, for x86-64-v3 (AVX2, FMA) and the baseline, and picked at load time.
 *
 * Poses are split over `threads` ranges with the GIL released: on PyTorch's OpenMP threads
 * where use_openmp found its runtime, else on POSIX threads (one thread on Windows).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifndef _WIN32
#include <dlfcn.h>
#include <pthread.h>
#define HAVE_THREADS 1
#endif

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
/* glibc's math-vector.h declares this only under -ffast-math; the vector variants
 * themselves follow C99 (signed zeros, infinities) to within 4 ulp. */
__attribute__((__simd__("notinbranch"))) extern double atan2(double, double);
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#define INLINE static inline __attribute__((always_inline))
/* Loops over joints, fingers, segments and components are unrolled completely, so that the
 * loop over poses has a straight-line body and vectorises across poses. */
#define UNROLLED_FOR _Pragma("GCC unroll 64") for
#define NUM_FEATURES 58

/* W poses at a time, one per lane of a vector (GCC/Clang vector extensions: arithmetic and
 * comparisons are element-wise; a scalar operand is broadcast). Masks are -1 (true) or 0. */
#define W 4
typedef double V __attribute__((vector_size(8 * W)));
typedef int64_t M __attribute__((vector_size(8 * W)));
#define ZERO ((V){0})
#define ONE (ZERO + 1.0)
#define ALL ((M){0} - 1)

INLINE V vsel(M m, V a, V b) { return (V)(((M)a & m) | ((M)b & ~m)); }

INLINE M visfinite(V x) { return ((M)x & 0x7fffffffffffffffLL) < 0x7ff0000000000000LL; }

INLINE V vsqrt(V x) {
    V r;
    UNROLLED_FOR (int w = 0; w < W; w++) r[w] = sqrt(x[w]);
    return r;
}

INLINE V vatan2(V y, V x) {
    double a[W], b[W], r[W];
    memcpy(a, &y, sizeof a);
    memcpy(b, &x, sizeof b);
#pragma omp simd
    for (int w = 0; w < W; w++) r[w] = atan2(a[w], b[w]);
    V out;
    memcpy(&out, r, sizeof out);
    return out;
}

typedef struct {
    double zero_length; /* kinematics.ZERO_LENGTH (= PARALLEL_SINE = OPPOSITE_NORMALS) */
    double aligned_sq;  /* kinematics.ALIGNED ** 2 */
    double coordinate_limit;
    int middle;      /* skeleton.REFERENCE_JOINTS[1] */
    int refbone;     /* normalisation "reference-bone" (else "none") */
} Params;

typedef struct {
    V bones[5][4][3]; /* normalised (and mirrored) bones, finger, segment, component */
    V length[5][4];
    V scale; /* the reference length (reference-bone), else 1 */
    V normal[4][3], cross_len[4], root_dot[4], root_product[4];
    V pair_unit[3][3], pair_len[3];
    V step[4][3], step_sq[4], edge_diff[4][3], curvature[4];
    V frame[3][5][3]; /* axis x, y, z; finger; component */
    V local[3][5][3]; /* phalanx; finger; axis (the level-0 frames' coordinates) */
    V u0[5][3], h0[5][3], kk0[5], fixed0[5], gamma0[2][5];
    V level1[2][5][3];
    V u1[5][3], h1[5][3], kk1[5], fixed1[5], gamma1[5];
    V c[3][5][3];                 /* each level's phalanx in its own frame */
    V ah[3][5], ah_sq[3][5], ac_sq[3][5]; /* angles_in_frame's saved values */
    M keep; /* -1 = not degenerate */
} Pose;

INLINE V dot3(const V a[3], const V b[3]) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

INLINE void cross3(const V a[3], const V b[3], V out[3]) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

INLINE V finite_or_zero(V v) { return vsel(visfinite(v), v, ZERO); }

/* A float32 output: what overflows float32 is 0 too (the chain computes in double, so a tiny
 * float32 pose can have finite features or gradients beyond float32's range). */
INLINE float to_float(double v) {
    float f = (float)v;
    return isfinite(f) ? f : 0.0f;
}

/* The carry T(u, w) of one level (torch_chain._rotation): u, h = u + e_z, kk = |h|^2,
 * fixed = 1 where antiparallel (h gains e_y and kk 1: the half turn about x). */
INLINE void rotation(const V c[3], V len, double aligned_sq, V u[3],
                     V h[3], V *kk, V *fixed) {
    UNROLLED_FOR (int k = 0; k < 3; k++) u[k] = c[k] / len;
    h[0] = u[0];
    h[1] = u[1];
    h[2] = u[2] + 1.0;
    V q = dot3(h, h);
    V f = vsel(q <= aligned_sq, ONE, ZERO);
    h[1] += f;
    *kk = q + f;
    *fixed = f;
}

/* T(u, w) = w - 2 (h.w / kk) h + 2 (u.w) e_z; returns (h.w) / kk. */
INLINE V carry(const V u[3], const V h[3], V kk, const V w[3],
                    V out[3]) {
    V half_gamma = dot3(h, w) / kk;
    UNROLLED_FOR (int k = 0; k < 3; k++) out[k] = w[k] - 2.0 * half_gamma * h[k];
    out[2] += 2.0 * dot3(u, w);
    return half_gamma;
}

/* Every intermediate of torch_chain.chain_forward for one pose, except the atan2. */
INLINE void pose_state(const V j[63], V sign, const Params *p, int refbone, Pose *s) {
    V raw[5][4][3], raw_len[5][4];
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) {
            int child = 1 + 4 * f + seg, parent = seg ? child - 1 : 0;
            UNROLLED_FOR (int k = 0; k < 3; k++) raw[f][seg][k] = j[3 * child + k] - j[3 * parent + k];
            raw[f][seg][0] *= sign;
            raw_len[f][seg] = vsqrt(dot3(raw[f][seg], raw[f][seg]));
        }
    }
    V ref = raw_len[2][0];
    s->scale = refbone ? ref : ONE;
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) {
            UNROLLED_FOR (int k = 0; k < 3; k++) s->bones[f][seg][k] = raw[f][seg][k] / s->scale;
            s->length[f][seg] = raw_len[f][seg] / s->scale;
        }
    }
    /* the palm */
    V root_len[5];
    UNROLLED_FOR (int f = 0; f < 5; f++) root_len[f] = s->length[f][0];
#define ROOT(f) s->bones[f][0]
    UNROLLED_FOR (int i = 0; i < 4; i++) {
        V normal_raw[3];
        cross3(ROOT(i + 1), ROOT(i), normal_raw); /* n_i ~ r_{i+1} x r_i */
        s->cross_len[i] = vsqrt(dot3(normal_raw, normal_raw));
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            s->normal[i][k] = normal_raw[k] / s->cross_len[i];
            s->step[i][k] = ROOT(i + 1)[k] - ROOT(i)[k];
        }
        s->root_dot[i] = dot3(ROOT(i), ROOT(i + 1));
        s->step_sq[i] = dot3(s->step[i], s->step[i]);
        s->root_product[i] = root_len[i + 1] * root_len[i];
    }
    UNROLLED_FOR (int i = 0; i < 3; i++) {
        V pair[3];
        UNROLLED_FOR (int k = 0; k < 3; k++) pair[k] = s->normal[i + 1][k] + s->normal[i][k];
        s->pair_len[i] = vsqrt(dot3(pair, pair));
        UNROLLED_FOR (int k = 0; k < 3; k++) s->pair_unit[i][k] = pair[k] / s->pair_len[i];
    }
    /* the edge normals (n_0, p_0, p_1, p_2, n_3) and the level-0 x axes -(n_0, n_1, p_1, p_2, n_3) */
    V edge[5][3];
    UNROLLED_FOR (int k = 0; k < 3; k++) {
        edge[0][k] = s->normal[0][k];
        edge[4][k] = s->normal[3][k];
        UNROLLED_FOR (int i = 0; i < 3; i++) edge[i + 1][k] = s->pair_unit[i][k];
        s->frame[0][0][k] = -s->normal[0][k];
        s->frame[0][1][k] = -s->normal[1][k];
        s->frame[0][2][k] = -s->pair_unit[1][k];
        s->frame[0][3][k] = -s->pair_unit[2][k];
        s->frame[0][4][k] = -s->normal[3][k];
    }
    UNROLLED_FOR (int i = 0; i < 4; i++) {
        UNROLLED_FOR (int k = 0; k < 3; k++) s->edge_diff[i][k] = edge[i + 1][k] - edge[i][k];
        s->curvature[i] = dot3(s->edge_diff[i], s->step[i]) / s->step_sq[i];
    }

    /* DESIGN 4.7: every tested quantity above the threshold (NaN fails), coordinates within
     * the limit in the input unit and normalised (|joint - joint middle| / reference) */
    double z = p->zero_length;
    M keep = ALL;
    V length_scale = refbone ? ONE : ref; /* thresholds relative to the reference */
    UNROLLED_FOR (int i = 0; i < 4; i++) {
        V step_test = refbone ? s->step_sq[i] * 1e7 : s->step_sq[i] / (ref * ref) * 1e7;
        keep &= step_test > z;
        keep &= s->cross_len[i] / s->root_product[i] > z;
    }
    UNROLLED_FOR (int i = 0; i < 3; i++) keep &= s->pair_len[i] > z;
    UNROLLED_FOR (int f = 0; f < 5; f++)
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) keep &= s->length[f][seg] / length_scale > z;
    V top[3], bottom[3];
    UNROLLED_FOR (int k = 0; k < 3; k++) top[k] = bottom[k] = j[k];
    UNROLLED_FOR (int n = 0; n < 21; n++) {
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            V v = j[3 * n + k];
            keep &= visfinite(v);
            top[k] = vsel(v > top[k], v, top[k]);
            bottom[k] = vsel(v < bottom[k], v, bottom[k]);
        }
    }
    UNROLLED_FOR (int k = 0; k < 3; k++) {
        keep &= top[k] <= p->coordinate_limit;
        keep &= -bottom[k] <= p->coordinate_limit;
        if (refbone) {
            V middle = j[3 * p->middle + k];
            keep &= (top[k] - middle) / ref <= p->coordinate_limit;
            keep &= (middle - bottom[k]) / ref <= p->coordinate_limit;
        }
    }
    s->keep = keep;

    /* the level-0 frames: x (above), z = the root bone, y = z x x */
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            s->frame[2][f][k] = ROOT(f)[k] / root_len[f];
        }
        cross3(s->frame[2][f], s->frame[0][f], s->frame[1][f]);
        UNROLLED_FOR (int l = 0; l < 3; l++)
            UNROLLED_FOR (int a = 0; a < 3; a++)
                s->local[l][f][a] = dot3(s->frame[a][f], s->bones[f][l + 1]);
        rotation(s->local[0][f], s->length[f][1], p->aligned_sq, s->u0[f], s->h0[f], &s->kk0[f],
                 &s->fixed0[f]);
        UNROLLED_FOR (int m = 0; m < 2; m++)
            s->gamma0[m][f] = carry(s->u0[f], s->h0[f], s->kk0[f], s->local[1 + m][f],
                                    s->level1[m][f]);
        rotation(s->level1[0][f], s->length[f][2], p->aligned_sq, s->u1[f], s->h1[f], &s->kk1[f],
                 &s->fixed1[f]);
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            s->c[0][f][k] = s->local[0][f][k];
            s->c[1][f][k] = s->level1[0][f][k];
        }
        s->gamma1[f] = carry(s->u1[f], s->h1[f], s->kk1[f], s->level1[1][f], s->c[2][f]);
        UNROLLED_FOR (int l = 0; l < 3; l++) {
            const V *c = s->c[l][f];
            V h_sq = c[0] * c[0] + c[2] * c[2];
            V pole = vsel(h_sq == 0.0, ONE, ZERO); /* along +-y: gradients 0, divided by 1 */
            s->ah[l][f] = vsqrt(h_sq) + pole;
            s->ah_sq[l][f] = h_sq + pole;
            s->ac_sq[l][f] = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
        }
    }
}

typedef struct {
    const void *joints, *sign, *grad;
    void *out, *keep;
    Py_ssize_t n, start, stop;
    int dbl;
    Params params;
    const struct Hulls *hulls; /* hull_range only */
} Job;

/* The 58 features of W poses (0 for a degenerate one, and for any non-finite value, as
 * chain_forward's nan_to_num) and which are kept (-1). */
INLINE M forward_lanes(const V j[63], V sign, const Params *p, int refbone, V v[58]) {
    Pose s;
    pose_state(j, sign, p, refbone, &s);
    UNROLLED_FOR (int f = 0; f < 5; f++)
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) v[4 * f + seg] = s.length[f][seg];
    UNROLLED_FOR (int q = 0; q < 4; q++) {
        v[20 + q] = s.curvature[q];
        v[24 + q] = vatan2(s.cross_len[q], s.root_dot[q]);
    }
    UNROLLED_FOR (int l = 0; l < 3; l++) {
        UNROLLED_FOR (int f = 0; f < 5; f++) {
            const V *c = s.c[l][f];
            v[28 + 5 * l + f] = vatan2(c[0] + 0.0, c[2]); /* -0 -> +0: kinematics' sign rule */
            v[43 + 5 * l + f] = vatan2(c[1], vsqrt(c[0] * c[0] + c[2] * c[2]));
        }
    }
    UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++)
        v[r] = vsel(s.keep, finite_or_zero(v[r]), ZERO);
    return s.keep;
}

/* Lanes of the W poses from i (m of them valid; the others repeat the last valid pose). */
INLINE void load_lanes(const Job *job, Py_ssize_t i, int m, V j[63], V *sign) {
    UNROLLED_FOR (int w = 0; w < W; w++) {
        Py_ssize_t pose = i + (w < m ? w : m - 1);
        if (job->dbl) {
            const double *src = (const double *)job->joints + 63 * pose;
            UNROLLED_FOR (int k = 0; k < 63; k++) j[k][w] = src[k];
            (*sign)[w] = job->sign ? ((const double *)job->sign)[pose] : 1.0;
        } else {
            const float *src = (const float *)job->joints + 63 * pose;
            UNROLLED_FOR (int k = 0; k < 63; k++) j[k][w] = src[k];
            (*sign)[w] = job->sign ? ((const float *)job->sign)[pose] : 1.0;
        }
    }
}

/* The loop over the poses, W at a time. */
CLONES static void *forward_range(void *arg) {
    const Job *job = (const Job *)arg;
    const Params p = job->params;
    const Py_ssize_t n = job->n, stop = job->stop;
    for (Py_ssize_t i = job->start; i < stop; i += W) {
        int m = stop - i < W ? (int)(stop - i) : W;
        V j[63], sign, v[NUM_FEATURES];
        load_lanes(job, i, m, j, &sign);
        M kept = forward_lanes(j, sign, &p, p.refbone, v);
        if (m == W) { /* a whole vector per feature row */
            if (job->dbl) {
                UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++)
                    memcpy((double *)job->out + r * n + i, &v[r], sizeof(V));
            } else {
                UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) {
                    float row[W];
                    UNROLLED_FOR (int w = 0; w < W; w++) row[w] = to_float(v[r][w]);
                    memcpy((float *)job->out + r * n + i, row, sizeof(row));
                }
            }
            UNROLLED_FOR (int w = 0; w < W; w++)
                ((unsigned char *)job->keep)[i + w] = kept[w] != 0;
            continue;
        }
        for (int w = 0; w < m; w++) {
            if (job->dbl) {
                double *dst = (double *)job->out + i + w;
                UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) dst[r * n] = v[r][w];
            } else {
                float *dst = (float *)job->out + i + w;
                UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) dst[r * n] = to_float(v[r][w]);
            }
            ((unsigned char *)job->keep)[i + w] = kept[w] != 0;
        }
    }
    return NULL;
}

/* Gradient through unit = v / |v| (norm = |v|). */
INLINE void unit_backward(const V g[3], const V unit[3], V norm,
                                 V out[3]) {
    V along = dot3(g, unit);
    UNROLLED_FOR (int k = 0; k < 3; k++) out[k] = (g[k] - along * unit[k]) / norm;
}

/* torch_chain._carry_backward for one finger and M vectors w, output gradients g: writes
 * G_w and adds G_u / 2 (antiparallel: 0) into grad_u. */
INLINE void carry_backward(const V u[3], const V h[3], V kk, V fixed,
                           int count, const V (*w)[3], const V *half_gamma,
                           const V (*g)[3], V (*grad_w)[3], V grad_u[3]) {
    V sum[3] = {ZERO, ZERO, ZERO};
    UNROLLED_FOR (int m = 0; m < count; m++) {
        V half_beta = dot3(g[m], h) / kk, gz = g[m][2];
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            grad_w[m][k] = g[m][k] - 2.0 * half_beta * h[k] + 2.0 * gz * u[k];
            sum[k] += (gz - half_beta) * w[m][k] - half_gamma[m] * g[m][k];
        }
        sum[2] += 2.0 * half_gamma[m] * half_beta;
    }
    UNROLLED_FOR (int k = 0; k < 3; k++) grad_u[k] = sum[k] * (1.0 - fixed);
}

/* torch_chain.chain_backward for one (kept) pose: joint gradients gj (63) from the feature
 * gradients g (58). */
INLINE void pose_backward(const Pose *s, const V g[NUM_FEATURES], V sign,
                          int refbone, V gj[63]) {
    V grad_c[3][5][3];
    UNROLLED_FOR (int l = 0; l < 3; l++) {
        UNROLLED_FOR (int f = 0; f < 5; f++) {
            const V *c = s->c[l][f];
            V per_abd = g[43 + 5 * l + f] / s->ah[l][f];
            V along_c = -(per_abd * c[1]) / s->ac_sq[l][f];
            V per_flex = g[28 + 5 * l + f] / s->ah_sq[l][f];
            UNROLLED_FOR (int k = 0; k < 3; k++) grad_c[l][f][k] = along_c * c[k];
            grad_c[l][f][0] += per_flex * c[2];
            grad_c[l][f][1] += per_abd;
            grad_c[l][f][2] -= per_flex * c[0];
        }
    }
    V grad_local[3][5][3], grad_phalanges[3][5][3], grad_root[5][3], grad_x[5][3];
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        /* level 2, then level 1: the frame carries, last first */
        V grad_level1[2][3], grad_u[3], grad_unit[3];
        carry_backward(s->u1[f], s->h1[f], s->kk1[f], s->fixed1[f], 1,
                       (const V(*)[3])s->level1[1][f], &s->gamma1[f],
                       (const V(*)[3])grad_c[2][f], &grad_level1[1], grad_u);
        unit_backward(grad_u, s->u1[f], s->length[f][2], grad_unit);
        UNROLLED_FOR (int k = 0; k < 3; k++) grad_level1[0][k] = grad_c[1][f][k] + 2.0 * grad_unit[k];
        const V w0[2][3] = {{s->local[1][f][0], s->local[1][f][1], s->local[1][f][2]},
                                 {s->local[2][f][0], s->local[2][f][1], s->local[2][f][2]}};
        const V gamma0[2] = {s->gamma0[0][f], s->gamma0[1][f]};
        V grad_w[2][3];
        carry_backward(s->u0[f], s->h0[f], s->kk0[f], s->fixed0[f], 2, w0, gamma0,
                       (const V(*)[3])grad_level1, grad_w, grad_u);
        unit_backward(grad_u, s->u0[f], s->length[f][1], grad_unit);
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            grad_local[0][f][k] = grad_c[0][f][k] + 2.0 * grad_unit[k];
            grad_local[1][f][k] = grad_w[0][k];
            grad_local[2][f][k] = grad_w[1][k];
        }
        /* the projection onto the level-0 frames */
        V grad_frame[3][3];
        UNROLLED_FOR (int l = 0; l < 3; l++)
            UNROLLED_FOR (int k = 0; k < 3; k++)
                grad_phalanges[l][f][k] = grad_local[l][f][0] * s->frame[0][f][k] +
                                          grad_local[l][f][1] * s->frame[1][f][k] +
                                          grad_local[l][f][2] * s->frame[2][f][k];
        UNROLLED_FOR (int a = 0; a < 3; a++)
            UNROLLED_FOR (int k = 0; k < 3; k++)
                grad_frame[a][k] = grad_local[0][f][a] * s->bones[f][1][k] +
                                   grad_local[1][f][a] * s->bones[f][2][k] +
                                   grad_local[2][f][a] * s->bones[f][3][k];
        /* y = z x x */
        V x_cross[3], z_cross[3], grad_z[3];
        cross3(s->frame[0][f], grad_frame[1], x_cross);
        cross3(s->frame[2][f], grad_frame[1], z_cross);
        UNROLLED_FOR (int k = 0; k < 3; k++) grad_z[k] = grad_frame[2][k] + x_cross[k];
        unit_backward(grad_z, s->frame[2][f], s->length[f][0], grad_root[f]);
        UNROLLED_FOR (int k = 0; k < 3; k++) grad_x[f][k] = grad_frame[0][k] - z_cross[k];
    }
    /* the palm: curvatures and x axes -> normals and pair units */
    V q[4][3], grad_step[4][3];
    UNROLLED_FOR (int i = 0; i < 4; i++) {
        V per_step = g[20 + i] / s->step_sq[i];
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            q[i][k] = per_step * s->step[i][k];
            grad_step[i][k] =
                (s->edge_diff[i][k] - 2.0 * s->curvature[i] * s->step[i][k]) * per_step;
        }
    }
    V grad_normal[4][3], grad_pair_unit[3][3];
    UNROLLED_FOR (int k = 0; k < 3; k++) {
        V gx0 = grad_x[0][k], gx1 = grad_x[1][k], gx2 = grad_x[2][k], gx3 = grad_x[3][k],
               gx4 = grad_x[4][k];
        grad_normal[0][k] = -q[0][k] - gx0;
        grad_normal[1][k] = -gx1;
        grad_normal[2][k] = ZERO;
        grad_normal[3][k] = q[3][k] - gx4;
        grad_pair_unit[0][k] = q[0][k] - q[1][k];
        grad_pair_unit[1][k] = q[1][k] - q[2][k] - gx2;
        grad_pair_unit[2][k] = q[2][k] - q[3][k] - gx3;
    }
    UNROLLED_FOR (int i = 0; i < 3; i++) {
        V grad_pair[3];
        unit_backward(grad_pair_unit[i], s->pair_unit[i], s->pair_len[i], grad_pair);
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            grad_normal[i][k] += grad_pair[k];
            grad_normal[i + 1][k] += grad_pair[k];
        }
    }
    UNROLLED_FOR (int i = 0; i < 4; i++) {
        /* normal = raw / |raw|, palm angle = atan2(|raw|, r_i . r_{i+1}) */
        V per_palm = g[24 + i] / (s->root_product[i] * s->root_product[i]);
        V radial = per_palm * s->root_dot[i] * s->cross_len[i] -
                        dot3(grad_normal[i], s->normal[i]);
        V grad_raw[3], crossed_after[3], crossed_before[3];
        UNROLLED_FOR (int k = 0; k < 3; k++)
            grad_raw[k] = (grad_normal[i][k] + radial * s->normal[i][k]) / s->cross_len[i];
        V grad_dot = per_palm * s->cross_len[i];
        const V *before = s->bones[i][0], *after = s->bones[i + 1][0];
        cross3(grad_raw, after, crossed_after);
        cross3(grad_raw, before, crossed_before);
        UNROLLED_FOR (int k = 0; k < 3; k++) {
            grad_root[i][k] += crossed_after[k] - grad_dot * after[k] - grad_step[i][k];
            grad_root[i + 1][k] += -crossed_before[k] - grad_dot * before[k] + grad_step[i][k];
        }
    }
    /* bones: lengths, roots, phalanges */
    V grad_bones[5][4][3];
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) {
            V per_length = g[4 * f + seg] / s->length[f][seg];
            UNROLLED_FOR (int k = 0; k < 3; k++) {
                V v = per_length * s->bones[f][seg][k];
                v += seg == 0 ? grad_root[f][k] : grad_phalanges[seg - 1][f][k];
                grad_bones[f][seg][k] = v;
            }
        }
    }
    V factor = ONE;
    if (refbone) { /* bones = raw / |raw_middle_root|: Euler's theorem, as chain_backward */
        V radial_all = ZERO;
        UNROLLED_FOR (int f = 0; f < 5; f++)
            UNROLLED_FOR (int seg = 0; seg < 4; seg++) radial_all += g[4 * f + seg] * s->length[f][seg];
        UNROLLED_FOR (int i = 0; i < 4; i++) radial_all -= g[20 + i] * s->curvature[i];
        UNROLLED_FOR (int k = 0; k < 3; k++) grad_bones[2][0][k] -= radial_all * s->bones[2][0][k];
        factor = finite_or_zero(1.0 / s->scale);
    }
    UNROLLED_FOR (int f = 0; f < 5; f++) {
        UNROLLED_FOR (int seg = 0; seg < 4; seg++) {
            UNROLLED_FOR (int k = 0; k < 3; k++)
                grad_bones[f][seg][k] = finite_or_zero(grad_bones[f][seg][k]) * factor;
            grad_bones[f][seg][0] *= sign;
        }
    }
    /* joints: +bone as its child, -bone as its parent */
    UNROLLED_FOR (int k = 0; k < 3; k++) {
        V wrist = ZERO;
        UNROLLED_FOR (int f = 0; f < 5; f++) wrist += grad_bones[f][0][k];
        gj[k] = -wrist;
        UNROLLED_FOR (int f = 0; f < 5; f++)
            UNROLLED_FOR (int seg = 0; seg < 4; seg++)
                gj[3 * (1 + 4 * f + seg) + k] =
                    grad_bones[f][seg][k] - (seg < 3 ? grad_bones[f][seg + 1][k] : ZERO);
    }
}

/* The 63 joint gradients of W poses (0 for a degenerate one). */
INLINE void backward_lanes(const V j[63], V sign, const V g[58], const Params *p, int refbone,
                           V gj[63]) {
    Pose s;
    pose_state(j, sign, p, refbone, &s);
    pose_backward(&s, g, sign, refbone, gj);
    UNROLLED_FOR (int k = 0; k < 63; k++) gj[k] = vsel(s.keep, gj[k], ZERO);
}

CLONES static void *backward_range(void *arg) {
    const Job *job = (const Job *)arg;
    const Params p = job->params;
    const Py_ssize_t n = job->n, stop = job->stop;
    for (Py_ssize_t i = job->start; i < stop; i += W) {
        int m = stop - i < W ? (int)(stop - i) : W;
        V j[63], sign, g[NUM_FEATURES], gj[63];
        load_lanes(job, i, m, j, &sign);
        if (m == W && job->dbl) { /* a whole vector per feature row */
            UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++)
                memcpy(&g[r], (const double *)job->grad + r * n + i, sizeof(V));
        } else if (m == W) {
            UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) {
                float row[W];
                memcpy(row, (const float *)job->grad + r * n + i, sizeof(row));
                UNROLLED_FOR (int w = 0; w < W; w++) g[r][w] = row[w];
            }
        } else { /* the last, partial vector: the missing lanes repeat the last pose */
            UNROLLED_FOR (int w = 0; w < W; w++) {
                Py_ssize_t pose = i + (w < m ? w : m - 1);
                if (job->dbl) {
                    const double *src = (const double *)job->grad + pose;
                    UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) g[r][w] = src[r * n];
                } else {
                    const float *src = (const float *)job->grad + pose;
                    UNROLLED_FOR (int r = 0; r < NUM_FEATURES; r++) g[r][w] = src[r * n];
                }
            }
        }
        backward_lanes(j, sign, g, &p, p.refbone, gj);
        for (int w = 0; w < m; w++) {
            if (job->dbl) {
                double *dst = (double *)job->out + 63 * (i + w);
                UNROLLED_FOR (int k = 0; k < 63; k++) dst[k] = gj[k][w];
            } else {
                float *dst = (float *)job->out + 63 * (i + w);
                UNROLLED_FOR (int k = 0; k < 63; k++) dst[k] = to_float(gj[k][w]);
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ joint-angle hulls
 * The distance of each pose's 15 (flexion, abduction) points to their hulls and its gradient,
 * as bmc_calib.torch._hull_distance_and_direction after _unwrap_flexion: the edge with the
 * smallest slack q = n.p - n.v (the largest outward slack; the first of equal ones) is the
 * nearest edge or shares the nearest vertex with it; its segment gives the distance
 * sqrt(q^2 + e^2), e = s - clamp(s, 0, L) with s = u.p - u.v, and the direction
 * (q n + e u) / distance from the nearest boundary point to the point. Inside (q + tolerance
 * >= 0): 0 and 0.
 *
 *   features   (58, N)    rows 28..42 flexion, 43..57 abduction (the chain's output)
 *   center     (H,)       flexion unwrap centres
 *   edges      (7, H, V)  bmc_calib.torch.HULL_EDGE_ROWS: n_x, n_y, -n.v, u_x, u_y, -u.v, L
 *   tolerance  (H,)
 *   dist, dx, dy  (H, N)  written
 * All in the features' dtype; H = 15. */
struct Hulls {
    const void *features, *center, *edges, *tolerance;
    void *dist, *dx, *dy;
    Py_ssize_t edges_per_hull;
};

INLINE double load_as_double(const void *base, int dbl, Py_ssize_t k) {
    return dbl ? ((const double *)base)[k] : (double)((const float *)base)[k];
}

INLINE void store_lanes(void *base, int dbl, Py_ssize_t k, V v, int m) {
    for (int w = 0; w < m; w++) {
        if (dbl)
            ((double *)base)[k + w] = v[w];
        else
            ((float *)base)[k + w] = (float)v[w];
    }
}

CLONES static void *hull_range(void *arg) {
    const Job *job = (const Job *)arg;
    const struct Hulls *hulls = job->hulls;
    const int dbl = job->dbl;
    const Py_ssize_t n = job->n, nv = hulls->edges_per_hull;
    const double two_pi = 2.0 * M_PI;
    for (int a = 0; a < 15; a++) {
        const double center = load_as_double(hulls->center, dbl, a);
        const double tolerance = load_as_double(hulls->tolerance, dbl, a);
        const Py_ssize_t row = (Py_ssize_t)a * nv; /* edge table offset of hull a */
        const Py_ssize_t plane = 15 * nv;          /* one row of the edge table */
        for (Py_ssize_t i = job->start; i < job->stop; i += W) {
            int m = job->stop - i < W ? (int)(job->stop - i) : W;
            V px, py;
            UNROLLED_FOR (int w = 0; w < W; w++) {
                Py_ssize_t pose = i + (w < m ? w : m - 1);
                double f = load_as_double(hulls->features, dbl, (28 + a) * n + pose);
                px[w] = f + two_pi * floor((M_PI - (f - center)) / two_pi); /* unwrap */
                py[w] = load_as_double(hulls->features, dbl, (43 + a) * n + pose);
            }
            V best = ZERO;
            M index = (M){0};
            for (Py_ssize_t v = 0; v < nv; v++) {
                double nx = load_as_double(hulls->edges, dbl, row + v);
                double ny = load_as_double(hulls->edges, dbl, plane + row + v);
                double off = load_as_double(hulls->edges, dbl, 2 * plane + row + v);
                V q = px * nx + py * ny + off;
                if (v == 0) {
                    best = q;
                    continue;
                }
                M closer = q < best;
                best = vsel(closer, q, best);
                index = (index & ~closer) | (((M){0} + (int64_t)v) & closer);
            }
            V q, along, nx, ny, ux, uy, length;
            UNROLLED_FOR (int w = 0; w < W; w++) {
                Py_ssize_t e = row + index[w];
                nx[w] = load_as_double(hulls->edges, dbl, e);
                ny[w] = load_as_double(hulls->edges, dbl, plane + e);
                ux[w] = load_as_double(hulls->edges, dbl, 3 * plane + e);
                uy[w] = load_as_double(hulls->edges, dbl, 4 * plane + e);
                along[w] = load_as_double(hulls->edges, dbl, 5 * plane + e);
                length[w] = load_as_double(hulls->edges, dbl, 6 * plane + e);
            }
            q = best;
            along = px * ux + py * uy + along;
            V clamped = vsel(along > 0.0, along, ZERO);
            clamped = vsel(clamped < length, clamped, length);
            V beyond = along - clamped;
            V dist = vsqrt(q * q + beyond * beyond);
            V outside = vsel(q + tolerance < 0.0, ONE, ZERO);
            V scale = outside / vsel(dist > 1e-30, dist, ZERO + 1e-30);
            Py_ssize_t k = (Py_ssize_t)a * n + i;
            store_lanes(hulls->dist, dbl, k, dist * outside, m);
            store_lanes(hulls->dx, dbl, k, (q * nx + beyond * ux) * scale, m);
            store_lanes(hulls->dy, dbl, k, (q * ny + beyond * uy) * scale, m);
        }
    }
    return NULL;
}

/* GNU OpenMP entry points of the runtime PyTorch already loaded (use_openmp): with them the
 * ranges run on PyTorch's own worker threads, which after each ATen kernel keep spinning for a
 * while (a thread of our own would have to share a core with one of them). */
static void (*gomp_parallel)(void (*)(void *), void *, unsigned, unsigned) = NULL;
static int (*omp_thread_num)(void) = NULL;
static int (*omp_num_threads)(void) = NULL;

typedef struct {
    Job *jobs;
    int count;
    void *(*fn)(void *);
} Team;

static void team_member(void *arg) {
    Team *team = (Team *)arg;
    int size = omp_num_threads(); /* the runtime may grant fewer threads than asked */
    for (int t = omp_thread_num(); t < team->count; t += size) team->fn(&team->jobs[t]);
}

/* Run fn over [0, n) in `threads` contiguous ranges: on PyTorch's OpenMP threads where
 * use_openmp found them, else on POSIX threads (the caller's thread takes the first range). */
static int run_ranges(Job *base, int threads, void *(*fn)(void *)) {
    Py_ssize_t n = base->n;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if ((Py_ssize_t)threads > n / 256) threads = (int)(n / 256 > 1 ? n / 256 : 1);
    Job jobs[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *base;
        jobs[t].start = n * t / threads;
        jobs[t].stop = n * (t + 1) / threads;
    }
    if (threads == 1) {
        fn(&jobs[0]);
        return 0;
    }
    if (gomp_parallel != NULL) {
        Team team = {jobs, threads, fn};
        gomp_parallel(team_member, &team, (unsigned)threads, 0);
        return 0;
    }
#ifdef HAVE_THREADS
    pthread_t ids[64];
    int started[64] = {0};
    pthread_attr_t attr; /* the loops need ~40 KB of stack: ask for ample */
    int have_attr = pthread_attr_init(&attr) == 0;
    if (have_attr) pthread_attr_setstacksize(&attr, 1 << 20);
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], have_attr ? &attr : NULL, fn, &jobs[t]) == 0;
    if (have_attr) pthread_attr_destroy(&attr);
    fn(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            fn(&jobs[t]); /* no thread: run its range here */
    }
#else
    for (int t = 0; t < threads; t++) fn(&jobs[t]);
#endif
    return 0;
}

PyDoc_STRVAR(use_openmp_doc,
             "use_openmp(path) -> bool\n\nRun on the threads of the GNU OpenMP runtime at path, "
             "if that library is already loaded (never loads one).");

static PyObject *fused_use_openmp(PyObject *self, PyObject *args) {
    const char *path;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
#if defined(HAVE_THREADS) && defined(RTLD_NOLOAD)
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib != NULL) {
        void *parallel = dlsym(lib, "GOMP_parallel"), *num = dlsym(lib, "omp_get_thread_num"),
             *size = dlsym(lib, "omp_get_num_threads");
        if (parallel != NULL && num != NULL && size != NULL) {
            *(void **)&gomp_parallel = parallel;
            *(void **)&omp_thread_num = num;
            *(void **)&omp_num_threads = size;
            Py_RETURN_TRUE;
        }
    }
#endif
    Py_RETURN_FALSE;
}

static int parse_job(PyObject *args, Job *job, int *threads, int backward) {
    unsigned long long joints, sign, grad = 0, out, keep = 0;
    Py_ssize_t n;
    int dbl, refbone, middle;
    double zero_length, aligned, coordinate_limit;
    if (backward) {
        if (!PyArg_ParseTuple(args, "KKKKniiiiddd", &joints, &sign, &grad, &out, &n, &dbl,
                              &refbone, threads, &middle, &zero_length, &aligned,
                              &coordinate_limit))
            return 0;
    } else {
        if (!PyArg_ParseTuple(args, "KKKKniiiiddd", &joints, &sign, &out, &keep, &n, &dbl,
                              &refbone, threads, &middle, &zero_length, &aligned,
                              &coordinate_limit))
            return 0;
    }
    if (n < 0 || middle < 0 || middle > 20) {
        PyErr_SetString(PyExc_ValueError, "bad pose count or reference joint");
        return 0;
    }
    job->joints = (const void *)(uintptr_t)joints;
    job->sign = sign ? (const void *)(uintptr_t)sign : NULL;
    job->grad = (const void *)(uintptr_t)grad;
    job->out = (void *)(uintptr_t)out;
    job->keep = (void *)(uintptr_t)keep;
    job->n = n;
    job->start = 0;
    job->stop = n;
    job->dbl = dbl;
    job->params.zero_length = zero_length;
    job->params.aligned_sq = aligned * aligned;
    job->params.coordinate_limit = coordinate_limit;
    job->params.middle = middle;
    job->params.refbone = refbone;
    job->hulls = NULL;
    return 1;
}

/* Parse a forward or backward call and run its loop over the poses with the GIL released. */
static PyObject *run_chain(PyObject *args, int backward, void *(*fn)(void *)) {
    Job job;
    int threads;
    if (!parse_job(args, &job, &threads, backward)) return NULL;
    Py_BEGIN_ALLOW_THREADS run_ranges(&job, threads, fn);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

PyDoc_STRVAR(forward_doc,
             "forward(joints, sign, features, keep, n, is_double, reference_bone, threads, "
             "middle, zero_length, aligned, coordinate_limit)\n\nAddresses of contiguous "
             "buffers (sign 0 = none); see the module source for layouts.");

static PyObject *fused_forward(PyObject *self, PyObject *args) {
    (void)self;
    return run_chain(args, 0, forward_range);
}

PyDoc_STRVAR(backward_doc,
             "backward(joints, sign, grad, out, n, is_double, reference_bone, threads, "
             "middle, zero_length, aligned, coordinate_limit)\n\nAddresses of contiguous "
             "buffers (sign 0 = none); see the module source for layouts.");

static PyObject *fused_backward(PyObject *self, PyObject *args) {
    (void)self;
    return run_chain(args, 1, backward_range);
}

PyDoc_STRVAR(hulls_doc,
             "hulls(features, center, edges, tolerance, dist, dx, dy, n, edges_per_hull, "
             "is_double, threads)\n\nAddresses of contiguous buffers; see the source.");

static PyObject *fused_hulls(PyObject *self, PyObject *args) {
    unsigned long long features, center, edges, tolerance, dist, dx, dy;
    Py_ssize_t n, nv;
    int dbl, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKKKnnii", &features, &center, &edges, &tolerance, &dist,
                          &dx, &dy, &n, &nv, &dbl, &threads))
        return NULL;
    if (n < 0 || nv < 1) {
        PyErr_SetString(PyExc_ValueError, "bad point or edge count");
        return NULL;
    }
    struct Hulls hulls = {(const void *)(uintptr_t)features, (const void *)(uintptr_t)center,
                          (const void *)(uintptr_t)edges,    (const void *)(uintptr_t)tolerance,
                          (void *)(uintptr_t)dist,           (void *)(uintptr_t)dx,
                          (void *)(uintptr_t)dy,             nv};
    Job job;
    memset(&job, 0, sizeof job);
    job.n = n;
    job.stop = n;
    job.dbl = dbl;
    job.hulls = &hulls;
    Py_BEGIN_ALLOW_THREADS run_ranges(&job, threads, hull_range);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", fused_forward, METH_VARARGS, forward_doc},
    {"backward", fused_backward, METH_VARARGS, backward_doc},
    {"use_openmp", fused_use_openmp, METH_VARARGS, use_openmp_doc},
    {"hulls", fused_hulls, METH_VARARGS, hulls_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bmc_calib._fused_chain",
    "The feature chain of bmc_calib.torch_chain, fused for CPU tensors (see its source).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fused_chain(void) { return PyModule_Create(&module); }
