// dragsaw_loss.cpp — CPU implementation of pdcr::dragsaw_loss and its backward.
//
// This file owns tensors, threads and checks; the arithmetic is in dragsaw_kernel_impl.h (SIMD,
// one copy per instruction set) and pdcr_math.h (per element). Memory is O(B·(N+K)·(C+P·M)) in
// the calling thread's scratch block (scratch.h); the N×K matrices are never formed.
//
// Threads (work_sharing.h: torch's threads claim items from a shared counter, so that a thread
// waiting for a busy core holds up at most one item): one item per image (prepare it, then stream
// all its rows) whenever there are at least as many images as threads, or the problem is small
// enough to run on the calling thread alone. With fewer images than threads, rows are split into chunks; in the
// backward each (image, chunk) then owns a column-gradient buffer so that no two threads write the
// same column.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_isa.h"
#include "cpu/dragsaw_kernel.h"
#include "cpu/scratch.h"
#include "cpu/work_sharing.h"

namespace pdcr {
namespace cpu {
namespace {

// Work (in multiply-adds of the forward) below which an op runs on the calling thread only:
// about 50 µs on one core of the 2-core AVX2 machine of the README, too little to be worth
// waking a sleeping thread (tens of µs on that virtual machine). The paper's sizes (9 to 43
// million) are far above it.
constexpr double kSerialWork = 1e6;

double forward_work(int64_t B, int64_t N, int64_t K, int64_t C, int64_t P) {
  return double(B) * double(N) * double(K) * (2.0 * double(C) + 12.0 * double(P));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a call of `work` multiply-adds: torch's intra-op thread count (1 in DataLoader
// workers, torch.set_num_threads otherwise), or 1 below kSerialWork.
int64_t threads_for(double work) { return work < kSerialWork ? 1 : at::get_num_threads(); }

// The active instruction set's kernels for T.
template <typename T>
const Kernels<T>& kernels();
template <>
const Kernels<float>& kernels<float>() { return active_kernels().f32; }
template <>
const Kernels<double>& kernels<double>() { return active_kernels().f64; }

// One call's problem bound to its inputs (converted to T, contiguous) and to the normalised,
// padded copies the kernels fill, carved out of the scratch block. Nothing is computed here:
// the copies are filled image by image by Kernels::prepare.
template <typename T>
struct Bound {
  DragsawProblem<T> problem;
  PrepareArgs<T> args;
  at::Tensor rows, cols, phi_rows, phi_cols;  // keep the converted inputs alive
};

template <typename T>
size_t bound_bytes(int64_t B, int64_t N, int64_t K, int64_t C, int64_t P, int64_t M,
                   bool single_layer) {
  constexpr int64_t L = lanes<T>();
  const int64_t Cp = round_up(C, L), Kp = round_up(std::max<int64_t>(K, 1), L);
  const int64_t counts[] = {B * N * Cp, B * N, single_layer ? 0 : B * K * Cp,
                            single_layer ? 0 : B * K, B * Cp * Kp, B * P * M * Kp};
  size_t total = 0;
  for (int64_t n : counts) total += Scratch::round(static_cast<size_t>(n) * sizeof(T));
  return total;
}

template <typename T>
Bound<T> bind(const at::Tensor& rows, const at::Tensor& phi_rows, const at::Tensor& cols,
              const at::Tensor& phi_cols, double tau, Scratch& scratch) {
  constexpr int64_t L = lanes<T>();
  const auto acc = c10::CppTypeToScalarType<T>::value;
  const int64_t B = rows.size(0), N = rows.size(1), C = rows.size(2), K = cols.size(1);
  const int64_t P = phi_rows.size(1), M = phi_rows.size(3);
  const int64_t Cp = round_up(C, L), Kp = round_up(std::max<int64_t>(K, 1), L);
  // In the single-layer case (cols is rows) the columns' copies are the rows'.
  const bool single_layer = cols.is_same(rows);

  Bound<T> out;
  out.rows = rows.to(acc).contiguous();
  out.cols = single_layer ? out.rows : cols.to(acc).contiguous();
  out.phi_rows = phi_rows.to(acc).contiguous();
  out.phi_cols = phi_cols.to(acc).contiguous();
  T* rows_hat = scratch.take<T>(B * N * Cp);
  T* row_norm = scratch.take<T>(B * N);
  T* cols_hat = single_layer ? rows_hat : scratch.take<T>(B * K * Cp);
  T* col_norm = single_layer ? row_norm : scratch.take<T>(B * K);
  T* cols_hat_t = scratch.take<T>(B * Cp * Kp);
  T* phi_cols_t = scratch.take<T>(B * P * M * Kp);
  out.problem = DragsawProblem<T>{B, N, K, C, Cp, Kp, P, M, rows_hat, cols_hat, cols_hat_t,
                                  out.phi_rows.template data_ptr<T>(), phi_cols_t,
                                  T(1.0 / tau)};
  out.args = PrepareArgs<T>{out.rows.template data_ptr<T>(),
                            single_layer ? nullptr : out.cols.template data_ptr<T>(),
                            out.phi_cols.template data_ptr<T>(),
                            rows_hat,
                            row_norm,
                            cols_hat,
                            col_norm};
  return out;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& rows, const at::Tensor& phi_rows,
                                                const at::Tensor& cols,
                                                const at::Tensor& phi_cols, double tau) {
  const int64_t B = rows.size(0), N = rows.size(1), C = rows.size(2), K = cols.size(1);
  const int64_t P = phi_rows.size(1), M = phi_rows.size(3);
  const auto acc = c10::CppTypeToScalarType<T>::value;
  at::Tensor loss = at::empty({B, P, N}, rows.options().dtype(acc));
  at::Tensor lse = at::empty({B, P, N}, rows.options().dtype(acc));
  if (loss.numel() == 0) return {loss.to(dragsaw_output_dtype(rows)), lse};
  if (K == 0) {
    // No columns: every sum over j is empty, so ℓ = 0; the LSE of nothing is -inf (unused).
    loss.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    return {loss.to(dragsaw_output_dtype(rows)), lse};
  }
  Scratch scratch(bound_bytes<T>(B, N, K, C, P, M, cols.is_same(rows)));
  const Bound<T> bound = bind<T>(rows, phi_rows, cols, phi_cols, tau, scratch);
  const DragsawProblem<T>& p = bound.problem;
  const Kernels<T>& kernel = kernels<T>();
  T* loss_ptr = loss.template data_ptr<T>();
  T* lse_ptr = lse.template data_ptr<T>();

  const int64_t threads = threads_for(forward_work(B, N, K, C, P));
  if (B >= threads) {
    share_work(B, threads, [&](int64_t b) {
      kernel.prepare(p, bound.args, b);
      kernel.forward(p, b, 0, N, loss_ptr, lse_ptr);
    });
  } else {
    share_work(B, threads, [&](int64_t b) { kernel.prepare(p, bound.args, b); });
    const int64_t tiles = ceil_div(N, kRowTile);
    share_work(B * tiles, threads, [&](int64_t w) {
      const int64_t b = w / tiles, i0 = (w % tiles) * kRowTile;
      kernel.forward(p, b, i0, std::min(N, i0 + kRowTile), loss_ptr, lse_ptr);
    });
  }
  return {loss.to(dragsaw_output_dtype(rows)), lse};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rows,
                                                 const at::Tensor& phi_rows,
                                                 const at::Tensor& cols,
                                                 const at::Tensor& phi_cols,
                                                 const at::Tensor& lse, double tau) {
  const int64_t B = rows.size(0), N = rows.size(1), C = rows.size(2), K = cols.size(1);
  const int64_t P = phi_rows.size(1), M = phi_rows.size(3);
  const auto acc = c10::CppTypeToScalarType<T>::value;
  if (B == 0 || N == 0 || K == 0) return {at::zeros_like(rows), at::zeros_like(cols)};

  // The backward does about three times the forward's work (S again, then G·V̂' and Gᵀ·V̂).
  const int64_t threads = threads_for(3.0 * forward_work(B, N, K, C, P));
  const int64_t tiles = ceil_div(N, kRowTile);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tiles, ceil_div(threads, B)));
  const int64_t tiles_per_chunk = ceil_div(tiles, chunks);
  const int64_t Cp = round_up(C, lanes<T>());
  Scratch scratch(bound_bytes<T>(B, N, K, C, P, M, cols.is_same(rows)) +
                  Scratch::round(sizeof(T) * B * N * Cp) +
                  Scratch::round(sizeof(T) * B * chunks * K * Cp) +
                  (chunks > 1 ? Scratch::round(sizeof(T) * B * K * Cp) : 0));
  const Bound<T> bound = bind<T>(rows, phi_rows, cols, phi_cols, tau, scratch);
  const DragsawProblem<T>& p = bound.problem;
  const Kernels<T>& kernel = kernels<T>();
  const at::Tensor grad_acc = grad.to(acc).contiguous();
  const at::Tensor lse_acc = lse.to(acc).contiguous();
  const T* grad_ptr = grad_acc.template data_ptr<T>();
  const T* lse_ptr = lse_acc.template data_ptr<T>();
  T* d_rows_hat = scratch.take<T>(B * N * Cp);          // ∂L/∂v̂ of the rows (B, N, Cp)
  T* d_cols_parts = scratch.take<T>(B * chunks * K * Cp);  // ∂L/∂v̂' per (image, chunk)
  at::Tensor grad_rows = at::empty({B, N, C}, rows.options().dtype(acc));
  at::Tensor grad_cols = at::empty({B, K, C}, rows.options().dtype(acc));
  T* grad_rows_ptr = grad_rows.template data_ptr<T>();
  T* grad_cols_ptr = grad_cols.template data_ptr<T>();

  if (chunks == 1) {
    // One task per image: prepare, stream its rows, then the normalisation's backward (eq. 8).
    share_work(B, threads, [&](int64_t b) {
      T* d_cols_hat = d_cols_parts + b * K * Cp;
      kernel.prepare(p, bound.args, b);
      std::fill(d_cols_hat, d_cols_hat + K * Cp, T(0));
      kernel.backward(p, grad_ptr, lse_ptr, b, 0, N, d_rows_hat, d_cols_hat);
      kernel.normalize_backward(d_rows_hat, p.rows_hat, bound.args.row_norm, b * N, (b + 1) * N,
                                C, Cp, grad_rows_ptr);
      kernel.normalize_backward(d_cols_parts, p.cols_hat, bound.args.col_norm, b * K, (b + 1) * K,
                                C, Cp, grad_cols_ptr);
    });
  } else {
    share_work(B, threads, [&](int64_t b) { kernel.prepare(p, bound.args, b); });
    share_work(B * chunks, threads, [&](int64_t w) {
      const int64_t b = w / chunks, chunk = w % chunks;
      const int64_t i0 = std::min(N, chunk * tiles_per_chunk * kRowTile);
      const int64_t i1 = std::min(N, i0 + tiles_per_chunk * kRowTile);
      T* d_cols_part = d_cols_parts + w * K * Cp;
      std::fill(d_cols_part, d_cols_part + K * Cp, T(0));
      if (i0 < i1) kernel.backward(p, grad_ptr, lse_ptr, b, i0, i1, d_rows_hat, d_cols_part);
    });
    // Sum the chunks' column gradients, (B, chunks, K, Cp) -> (B, K, Cp), then eq. 8 backward;
    // both in blocks of vectors.
    T* d_cols_hat = scratch.take<T>(B * K * Cp);
    constexpr int64_t kSumBlock = 64, kNormBlock = 256;
    share_work(ceil_div(B * K, kSumBlock), threads, [&](int64_t block) {
      const int64_t begin = block * kSumBlock, end = std::min(B * K, begin + kSumBlock);
      for (int64_t bj = begin; bj < end; ++bj) {
        const int64_t b = bj / K, j = bj % K;
        T* dst = d_cols_hat + bj * Cp;
        std::fill(dst, dst + Cp, T(0));
        for (int64_t q = 0; q < chunks; ++q) {
          const T* src = d_cols_parts + ((b * chunks + q) * K + j) * Cp;
          for (int64_t c = 0; c < Cp; ++c) dst[c] += src[c];
        }
      }
    });
    share_work(ceil_div(B * (N + K), kNormBlock), threads, [&](int64_t block) {
      const int64_t begin = block * kNormBlock, end = std::min(B * (N + K), begin + kNormBlock);
      const int64_t split = B * N;  // [0, B*N) rows, then [B*N, B*(N+K)) columns
      if (begin < split)
        kernel.normalize_backward(d_rows_hat, p.rows_hat, bound.args.row_norm, begin,
                                  std::min(end, split), C, Cp, grad_rows_ptr);
      if (end > split)
        kernel.normalize_backward(d_cols_hat, p.cols_hat, bound.args.col_norm,
                                  std::max(begin, split) - split, end - split, C, Cp,
                                  grad_cols_ptr);
    });
  }
  return {grad_rows.to(rows.scalar_type()), grad_cols.to(cols.scalar_type())};
}

bool use_double(const at::Tensor& rows) { return rows.scalar_type() == at::kDouble; }

std::tuple<at::Tensor, at::Tensor> dragsaw_loss_cpu(const at::Tensor& rows,
                                                    const at::Tensor& phi_rows,
                                                    const at::Tensor& cols,
                                                    const at::Tensor& phi_cols, double tau) {
  check_dragsaw_inputs(rows, phi_rows, cols, phi_cols, tau);
  return use_double(rows) ? forward_impl<double>(rows, phi_rows, cols, phi_cols, tau)
                          : forward_impl<float>(rows, phi_rows, cols, phi_cols, tau);
}

std::tuple<at::Tensor, at::Tensor> dragsaw_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rows, const at::Tensor& phi_rows,
    const at::Tensor& cols, const at::Tensor& phi_cols, const at::Tensor& lse, double tau) {
  check_dragsaw_inputs(rows, phi_rows, cols, phi_cols, tau);
  check_dragsaw_backward_inputs(grad, rows, phi_rows, lse);
  return use_double(rows)
             ? backward_impl<double>(grad, rows, phi_rows, cols, phi_cols, lse, tau)
             : backward_impl<float>(grad, rows, phi_rows, cols, phi_cols, lse, tau);
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) {
  m.impl("dragsaw_loss", &dragsaw_loss_cpu);
  m.impl("dragsaw_loss_backward", &dragsaw_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace pdcr
