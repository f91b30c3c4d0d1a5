// Multiresolution hash-grid encoding on the CPU: forward, table gradient, position gradient.
//
// The same arithmetic as stages/field/encodings.py (the reference): per level, the point is
// scaled by the level's resolution, its cell corner c gets the row
//   (level << log2_table) | ((cx*mx ^ cy*my ^ cz*mz) & (2^log2_table - 1))
// with uint32 products (they wrap exactly like the reference's int32 ones), and the 8 corners
// are weighted trilinearly. Corner k = 4i + 2j + l takes the x, y, z corner i, j, l (0 low, 1 high).
//
// Threads: the forward pass and the position gradient split the points; the table gradient
// splits the levels, since every level owns its own slab of rows and so no two threads ever add
// into the same row (no atomics, no per-thread copies of the table). Every loop runs level by
// level, so the level's slab (2^15 rows x 2 features = 256 KB by default) stays in L2.
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace {

constexpr int64_t kChunk = 2048;  // points per work item of the forward pass

struct Corners {
  uint32_t row[8];
  float weight[8];
  float frac[3];
  uint32_t cell[3];
};

inline bool same_cell(const Corners& a, const Corners& b) {
  return a.cell[0] == b.cell[0] && a.cell[1] == b.cell[1] && a.cell[2] == b.cell[2];
}

inline float unit_clamp(float v) { return v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; }  // NaN -> 0

// The 8 rows (relative to the level's slab) and trilinear weights of point p at one level.
inline void corners(const float* p, float res, const uint32_t* mult, uint32_t mask, Corners& c) {
  uint32_t lo[3], hi[3];
  float w[3][2];
  for (int d = 0; d < 3; ++d) {
    const float scaled = unit_clamp(p[d]) * res;
    const float fl = std::floor(scaled);
    const float t = scaled - fl;
    const uint32_t cell = static_cast<uint32_t>(static_cast<int32_t>(fl));
    c.cell[d] = cell;
    lo[d] = cell * mult[d];
    hi[d] = (lo[d] + mult[d]) & mask;
    lo[d] &= mask;
    w[d][0] = 1.0f - t;
    w[d][1] = t;
    c.frac[d] = t;
  }
  for (int i = 0; i < 2; ++i) {
    const uint32_t rx = i ? hi[0] : lo[0];
    for (int j = 0; j < 2; ++j) {
      const uint32_t rxy = rx ^ (j ? hi[1] : lo[1]);
      const float wxy = w[0][i] * w[1][j];
      const int k = 4 * i + 2 * j;
      c.row[k] = rxy ^ lo[2];
      c.row[k + 1] = rxy ^ hi[2];
      c.weight[k] = wxy * w[2][0];
      c.weight[k + 1] = wxy * w[2][1];
    }
  }
}

// [start, stop): this thread's share of n items, in contiguous blocks.
inline void thread_range(int64_t n, int64_t& start, int64_t& stop) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  start = n * t / nt;
  stop = n * (t + 1) / nt;
}

template <int F>
void forward_impl(int64_t n, int n_levels, int log2_table, const float* pos, const float* table,
                  const float* res, const uint32_t* mult, float* out, int n_threads) {
  const uint32_t mask = (1u << log2_table) - 1u;
  const int out_dim = n_levels * F;
#pragma omp parallel num_threads(n_threads)
  for (int level = 0; level < n_levels; ++level) {  // level-major: one slab at a time stays in L2
    const float* slab = table + (static_cast<int64_t>(level) << log2_table) * F;
    const float r = res[level];
    const uint32_t* m = mult + 3 * level;
    // chunks handed out dynamically; no barrier between levels (each writes its own columns)
#pragma omp for schedule(dynamic, kChunk) nowait
    for (int64_t i = 0; i < n; ++i) {
      Corners c;
      corners(pos + 3 * i, r, m, mask, c);
      float acc[F];
      for (int f = 0; f < F; ++f) acc[f] = 0.0f;
      for (int k = 0; k < 8; ++k) {
        const float* v = slab + static_cast<int64_t>(c.row[k]) * F;
        for (int f = 0; f < F; ++f) acc[f] += c.weight[k] * v[f];
      }
      float* o = out + i * out_dim + level * F;
      for (int f = 0; f < F; ++f) o[f] = acc[f];
    }
  }
}

template <int F>
inline void add_run(float* __restrict slab, const Corners& c, const float (&sum)[8][F]) {
  for (int k = 0; k < 8; ++k) {
    float* v = slab + static_cast<int64_t>(c.row[k]) * F;
    for (int f = 0; f < F; ++f) v[f] += sum[k][f];
  }
}

template <int F>
void table_grad_impl(int64_t n, int n_levels, int log2_table, const float* pos, const float* grad_out,
                     const float* res, const uint32_t* mult, float* grad_table, int n_threads) {
  const uint32_t mask = (1u << log2_table) - 1u;
  const int out_dim = n_levels * F;
  // grad_out [n, L*F] -> level-major [L, n, F]: each level then reads one contiguous stream
  std::vector<float> by_level(static_cast<size_t>(n) * out_dim);
#pragma omp parallel num_threads(n_threads)
  {
    int64_t start, stop;
    thread_range(n, start, stop);
    for (int64_t i = start; i < stop; ++i)
      for (int level = 0; level < n_levels; ++level)
        for (int f = 0; f < F; ++f) by_level[(level * n + i) * F + f] = grad_out[i * out_dim + level * F + f];
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
    for (int level = 0; level < n_levels; ++level) {
      float* __restrict slab = grad_table + (static_cast<int64_t>(level) << log2_table) * F;
      const float r = res[level];
      const uint32_t* m = mult + 3 * level;
      const float* __restrict g_level = by_level.data() + static_cast<int64_t>(level) * n * F;
      // Consecutive samples of a ray often share a cell (always on coarse levels): their
      // contributions are summed in registers and added to the table once per run of the cell.
      Corners run;
      float run_sum[8][F];
      bool open = false;
      for (int64_t i = 0; i < n; ++i) {
        float g[F];
        bool any = false;
        for (int f = 0; f < F; ++f) {
          g[f] = g_level[i * F + f];
          any |= g[f] != 0.0f;
        }
        if (!any) continue;  // e.g. samples whose outputs did not reach the loss
        Corners c;
        corners(pos + 3 * i, r, m, mask, c);
        if (open && same_cell(c, run)) {
          for (int k = 0; k < 8; ++k)
            for (int f = 0; f < F; ++f) run_sum[k][f] += c.weight[k] * g[f];
          continue;
        }
        if (open) add_run<F>(slab, run, run_sum);
        run = c;
        open = true;
        for (int k = 0; k < 8; ++k)
          for (int f = 0; f < F; ++f) run_sum[k][f] = c.weight[k] * g[f];
      }
      if (open) add_run<F>(slab, run, run_sum);
    }
  }
}

template <int F>
void position_grad_impl(int64_t n, int n_levels, int log2_table, const float* pos, const float* table,
                        const float* grad_out, const float* res, const uint32_t* mult, float* grad_pos,
                        int n_threads) {
  const uint32_t mask = (1u << log2_table) - 1u;
  const int out_dim = n_levels * F;
#pragma omp parallel num_threads(n_threads)
  {
    int64_t start, stop;
    thread_range(n, start, stop);
    for (int64_t i = start; i < stop; ++i)
      for (int d = 0; d < 3; ++d) grad_pos[3 * i + d] = 0.0f;
    for (int level = 0; level < n_levels; ++level) {
      const float* slab = table + (static_cast<int64_t>(level) << log2_table) * F;
      const float r = res[level];
      const uint32_t* m = mult + 3 * level;
      for (int64_t i = start; i < stop; ++i) {
        const float* g = grad_out + i * out_dim + level * F;
        Corners c;
        corners(pos + 3 * i, r, m, mask, c);
        // s[k] = <grad_out, table[row_k]>; d weight_k / d frac_d is +-(product of the other two factors)
        float s[8];
        for (int k = 0; k < 8; ++k) {
          const float* v = slab + static_cast<int64_t>(c.row[k]) * F;
          float dot = 0.0f;
          for (int f = 0; f < F; ++f) dot += g[f] * v[f];
          s[k] = dot;
        }
        const float wx[2] = {1.0f - c.frac[0], c.frac[0]};
        const float wy[2] = {1.0f - c.frac[1], c.frac[1]};
        const float wz[2] = {1.0f - c.frac[2], c.frac[2]};
        float dx = 0.0f, dy = 0.0f, dz = 0.0f;
        for (int k = 0; k < 8; ++k) {
          const int a = k >> 2, b = (k >> 1) & 1, e = k & 1;
          dx += (a ? s[k] : -s[k]) * wy[b] * wz[e];
          dy += (b ? s[k] : -s[k]) * wx[a] * wz[e];
          dz += (e ? s[k] : -s[k]) * wx[a] * wy[b];
        }
        float* gp = grad_pos + 3 * i;
        gp[0] += dx * r;
        gp[1] += dy * r;
        gp[2] += dz * r;
      }
    }
    for (int64_t i = start; i < stop; ++i)
      for (int d = 0; d < 3; ++d) {  // the clamp to [0, 1] passes the gradient only inside (inclusive)
        const float v = pos[3 * i + d];
        if (!(v >= 0.0f && v <= 1.0f)) grad_pos[3 * i + d] = 0.0f;
      }
  }
}

}  // namespace

#define DISPATCH_F(F_VALUE, CALL)      \
  switch (F_VALUE) {                   \
    case 1: { constexpr int F = 1; CALL; return 0; } \
    case 2: { constexpr int F = 2; CALL; return 0; } \
    case 4: { constexpr int F = 4; CALL; return 0; } \
    case 8: { constexpr int F = 8; CALL; return 0; } \
    default: return 1;                 \
  }

extern "C" {

// All arrays are contiguous float32 / uint32. pos [n, 3], table [n_levels << log2_table, F],
// res [n_levels], mult [n_levels, 3], out / grad_out [n, n_levels * F], grad_pos [n, 3].
// grad_table must be zeroed by the caller (it is added into). Returns 0, or 1 for an unsupported F.
int neroic_hash_grid_forward(int64_t n, int n_levels, int n_features, int log2_table, const float* pos,
                             const float* table, const float* res, const uint32_t* mult, float* out,
                             int n_threads) {
  DISPATCH_F(n_features, forward_impl<F>(n, n_levels, log2_table, pos, table, res, mult, out, n_threads))
}

int neroic_hash_grid_table_grad(int64_t n, int n_levels, int n_features, int log2_table, const float* pos,
                                const float* grad_out, const float* res, const uint32_t* mult,
                                float* grad_table, int n_threads) {
  DISPATCH_F(n_features, table_grad_impl<F>(n, n_levels, log2_table, pos, grad_out, res, mult, grad_table,
                                            n_threads))
}

int neroic_hash_grid_position_grad(int64_t n, int n_levels, int n_features, int log2_table, const float* pos,
                                   const float* table, const float* grad_out, const float* res,
                                   const uint32_t* mult, float* grad_pos, int n_threads) {
  DISPATCH_F(n_features, position_grad_impl<F>(n, n_levels, log2_table, pos, table, grad_out, res, mult,
                                               grad_pos, n_threads))
}

}  // extern "C"
