// A small ReLU MLP, fused: forward and backward of all layers on blocks of rows that stay in cache.
//
// Layer l maps dims[l] -> dims[l+1] with W_l [dims[l+1], dims[l]] (torch's Linear layout) and
// bias b_l; every layer but the last is followed by a ReLU; `first_bias` [n, dims[1]] (optional)
// is added to the first layer's output before its ReLU, as stages/field/mlp.py does.
//
// PyTorch runs such a network as one matrix product per layer over all rows: each activation
// ([n, 64] floats, 16 MB at n = 65536) goes out to memory and comes back, the bias, ReLU and its
// mask are further passes over it, and MKL is slow on these tall, skinny shapes. Here each thread
// takes blocks of kBlock rows through every layer in L1/L2 (blocks are handed out dynamically, so
// a thread slowed by another process on its core does not hold the others up); only the
// post-ReLU activations the backward pass needs are written out. The products use one AVX2/FMA
// micro-kernel (6 rows x 16 columns of accumulators in registers; a portable version where the
// CPU lacks AVX2/FMA) for all three kinds: activations x W^T, gradients x W, and gradients^T x
// activations for the weight gradients (summed per thread, then reduced).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr int kBlock = 96;  // rows per block (a multiple of the micro-kernel's 6 rows)

inline int pad8(int v) { return (v + 7) & ~7; }

// C[R, 8*NV] (+)= sum_p A(r, p) * B[p, 0:8*NV], with A(r, p) = A[r*sai + p*sap] and B rows ldb apart.
#if defined(__AVX2__) && defined(__FMA__)
// (the pragmas unroll the register tile completely: partly unrolled, gcc spills it every step)
template <int R, int NV>
inline void micro_kernel(int P, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
                         int64_t ldc, bool accumulate) {
  __m256 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
  for (int p = 0; p < P; ++p) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + p * ldb + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * sai + p * sap);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, acc[r][v]);
}
#else  // portable version of the same kernel (the compiler vectorises what it can)
template <int R, int NV>
inline void micro_kernel(int P, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
                         int64_t ldc, bool accumulate) {
  float acc[R][8 * NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 8 * NV; ++j) acc[r][j] = accumulate ? C[r * ldc + j] : 0.0f;
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r) {
      const float a = A[r * sai + p * sap];
      for (int j = 0; j < 8 * NV; ++j) acc[r][j] += a * B[p * ldb + j];
    }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 8 * NV; ++j) C[r * ldc + j] = acc[r][j];
}
#endif

template <int NV>
void gemm_columns(int rows, int P, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
                  int64_t ldc, bool accumulate) {
  int i = 0;
  for (; i + 6 <= rows; i += 6) micro_kernel<6, NV>(P, A + i * sai, sai, sap, B, ldb, C + i * ldc, ldc, accumulate);
  const float* a = A + i * sai;
  float* c = C + i * ldc;
  switch (rows - i) {
    case 5: micro_kernel<5, NV>(P, a, sai, sap, B, ldb, c, ldc, accumulate); break;
    case 4: micro_kernel<4, NV>(P, a, sai, sap, B, ldb, c, ldc, accumulate); break;
    case 3: micro_kernel<3, NV>(P, a, sai, sap, B, ldb, c, ldc, accumulate); break;
    case 2: micro_kernel<2, NV>(P, a, sai, sap, B, ldb, c, ldc, accumulate); break;
    case 1: micro_kernel<1, NV>(P, a, sai, sap, B, ldb, c, ldc, accumulate); break;
    default: break;
  }
}

// C[rows, cols] (+)= A(rows x P) B(P x cols); cols is a multiple of 8 (B and C are padded to it).
void gemm(int rows, int cols, int P, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
  int j = 0;
  for (; j + 16 <= cols; j += 16) gemm_columns<2>(rows, P, A, sai, sap, B + j, ldb, C + j, ldc, accumulate);
  for (; j < cols; j += 8) gemm_columns<1>(rows, P, A, sai, sap, B + j, ldb, C + j, ldc, accumulate);
}

// The weights in the two padded layouts the products read: W^T [K, pad8(M)] and W [M, pad8(K)].
struct PaddedWeights {
  std::vector<std::vector<float>> transposed, padded;
  PaddedWeights(int n_layers, const int* dims, const float* const* weights, bool need_transposed, bool need_padded) {
    for (int l = 0; l < n_layers; ++l) {
      const int K = dims[l], M = dims[l + 1];
      const float* W = weights[l];
      if (need_transposed) {
        std::vector<float> t(static_cast<size_t>(K) * pad8(M), 0.0f);
        for (int m = 0; m < M; ++m)
          for (int k = 0; k < K; ++k) t[k * pad8(M) + m] = W[m * K + k];
        transposed.push_back(std::move(t));
      }
      if (need_padded) {
        std::vector<float> p(static_cast<size_t>(M) * pad8(K), 0.0f);
        for (int m = 0; m < M; ++m)
          for (int k = 0; k < K; ++k) p[m * pad8(K) + k] = W[m * K + k];
        padded.push_back(std::move(p));
      }
    }
  }
};

int max_padded_dim(int n_layers, const int* dims) {
  int widest = 0;
  for (int l = 0; l <= n_layers; ++l) widest = std::max(widest, pad8(dims[l]));
  return widest;
}

}  // namespace

extern "C" {

// x [n, dims[0]] with row stride ldx; first_bias [n, dims[1]] or null; out [n, dims[L]];
// hidden: null, or L-1 outputs [n, dims[l+1]] that receive the post-ReLU activations (for backward).
int neroic_mlp_forward(int64_t n, int n_layers, const int* dims, const float* const* weights,
                       const float* const* biases, const float* x, int64_t ldx, const float* first_bias, float* out,
                       float* const* hidden, int n_threads) {
  if (n_layers < 1) return 1;
  const PaddedWeights w(n_layers, dims, weights, true, false);
  const int widest = max_padded_dim(n_layers, dims);
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<float> buffers(2 * static_cast<size_t>(kBlock) * widest);
#pragma omp for schedule(dynamic, 4)
    for (int64_t block = 0; block < n_blocks; ++block) {
      const int64_t r0 = block * kBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kBlock, n - r0));
      const float* a = x + r0 * ldx;
      int64_t lda = ldx;
      for (int l = 0; l < n_layers; ++l) {
        const int K = dims[l], M = dims[l + 1], Mp = pad8(M);
        float* c = buffers.data() + (l & 1) * static_cast<size_t>(kBlock) * widest;
        gemm(rows, Mp, K, a, lda, 1, w.transposed[l].data(), Mp, c, Mp, false);
        const float* b = biases[l];
        const bool relu = l + 1 < n_layers;
        float* keep = relu ? (hidden ? hidden[l] + r0 * M : nullptr) : out + r0 * M;
        for (int r = 0; r < rows; ++r) {
          float* row = c + r * Mp;
          const float* fb = (l == 0 && first_bias) ? first_bias + (r0 + r) * M : nullptr;
          for (int m = 0; m < M; ++m) {
            float v = row[m] + b[m];
            if (fb) v += fb[m];
            if (relu) v = v < 0.0f ? 0.0f : v;  // NaN passes, as torch's ReLU
            row[m] = v;
          }
          if (keep) std::memcpy(keep + r * M, row, sizeof(float) * M);
        }
        a = c;
        lda = Mp;
      }
    }
  }
  return 0;
}

// Gradients of the forward above. x as in forward; hidden: its L-1 saved activations; grad_out
// [n, dims[L]]. grad_x [n, dims[0]] (contiguous) and grad_first_bias [n, dims[1]] may be null;
// grad_weights[l] [dims[l+1], dims[l]] and grad_biases[l] [dims[l+1]] are overwritten.
int neroic_mlp_backward(int64_t n, int n_layers, const int* dims, const float* const* weights, const float* x,
                        int64_t ldx, const float* const* hidden, const float* grad_out, float* grad_x,
                        float* grad_first_bias, float* const* grad_weights, float* const* grad_biases,
                        int n_threads) {
  if (n_layers < 1) return 1;
  const PaddedWeights w(n_layers, dims, weights, false, true);
  const int widest = max_padded_dim(n_layers, dims);
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  // per-thread sums of the weight and bias gradients, reduced after the parallel part
  size_t per_thread = 0;
  std::vector<size_t> w_offset(n_layers), b_offset(n_layers);
  for (int l = 0; l < n_layers; ++l) {
    w_offset[l] = per_thread;
    per_thread += static_cast<size_t>(dims[l + 1]) * pad8(dims[l]);
    b_offset[l] = per_thread;
    per_thread += dims[l + 1];
  }
  const int n_used = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_blocks)));
  std::vector<float> sums(per_thread * n_used, 0.0f);
#pragma omp parallel num_threads(n_used)
  {
    float* mine = sums.data() + per_thread * omp_get_thread_num();
    std::vector<float> buffers(3 * static_cast<size_t>(kBlock) * widest);
    float* g_buffers[2] = {buffers.data(), buffers.data() + static_cast<size_t>(kBlock) * widest};
    float* padded_input = buffers.data() + 2 * static_cast<size_t>(kBlock) * widest;
#pragma omp for schedule(dynamic, 4)
    for (int64_t block = 0; block < n_blocks; ++block) {
      const int64_t r0 = block * kBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kBlock, n - r0));
      const float* g = grad_out + r0 * dims[n_layers];  // gradient w.r.t. layer l's output
      int64_t ldg = dims[n_layers];
      for (int l = n_layers - 1; l >= 0; --l) {
        const int K = dims[l], M = dims[l + 1], Kp = pad8(K);
        if (l == 0 && grad_first_bias)
          for (int r = 0; r < rows; ++r) std::memcpy(grad_first_bias + (r0 + r) * M, g + r * ldg, sizeof(float) * M);
        // the layer's input, padded to Kp columns when K is not a multiple of 8
        const float* in = l == 0 ? x + r0 * ldx : hidden[l - 1] + r0 * K;
        int64_t ld_in = l == 0 ? ldx : K;
        if (K != Kp) {
          for (int r = 0; r < rows; ++r) {
            std::memcpy(padded_input + r * Kp, in + r * ld_in, sizeof(float) * K);
            std::fill(padded_input + r * Kp + K, padded_input + (r + 1) * Kp, 0.0f);
          }
          in = padded_input;
          ld_in = Kp;
        }
        gemm(M, Kp, rows, g, 1, ldg, in, ld_in, mine + w_offset[l], Kp, true);  // dW += g^T in
        float* db = mine + b_offset[l];
        for (int r = 0; r < rows; ++r)
          for (int m = 0; m < M; ++m) db[m] += g[r * ldg + m];
        if (l == 0 && !grad_x) break;
        float* g_in = g_buffers[l & 1];
        gemm(rows, Kp, M, g, ldg, 1, w.padded[l].data(), Kp, g_in, Kp, false);  // g W
        if (l == 0) {
          for (int r = 0; r < rows; ++r) std::memcpy(grad_x + (r0 + r) * K, g_in + r * Kp, sizeof(float) * K);
          break;
        }
        const float* h = hidden[l - 1] + r0 * K;  // ReLU: the gradient passes where the output is > 0
        for (int r = 0; r < rows; ++r) {
          const float* hr = h + r * K;
          float* gr = g_in + r * Kp;
          for (int k = 0; k < K; ++k) gr[k] = hr[k] <= 0.0f ? 0.0f : gr[k];  // a blend, no branch
        }
        g = g_in;
        ldg = Kp;
      }
    }
  }
  for (int l = 0; l < n_layers; ++l) {
    const int K = dims[l], M = dims[l + 1], Kp = pad8(K);
    for (int m = 0; m < M; ++m) {
      for (int k = 0; k < K; ++k) {
        float s = 0.0f;
        for (int t = 0; t < n_used; ++t) s += sums[t * per_thread + w_offset[l] + m * Kp + k];
        grad_weights[l][m * K + k] = s;
      }
      float s = 0.0f;
      for (int t = 0; t < n_used; ++t) s += sums[t * per_thread + b_offset[l] + m];
      grad_biases[l][m] = s;
    }
  }
  return 0;
}

}  // extern "C"
