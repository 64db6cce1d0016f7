// scratch.h — per-thread scratch memory for the CPU kernels' temporaries.
//
// A dragsaw call needs a few MB of temporaries (normalised copies, gradient buffers). Allocated
// afresh on every call, glibc returns them to the OS on free and the next call pays the page
// faults again, which measured as long as the kernel itself at the paper's sizes. So requests
// up to kMaxCachedBytes reuse one growing block per calling thread; larger ones are allocated for
// the call and freed after it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace pdcr {
namespace cpu {

constexpr size_t kScratchAlign = 64;
constexpr size_t kMaxCachedBytes = size_t(256) << 20;

class Scratch {
 public:
  explicit Scratch(size_t bytes) {
    if (bytes > kMaxCachedBytes) {
      owned_ = ::operator new[](bytes, std::align_val_t(kScratchAlign));
      ptr_ = owned_;
      return;
    }
    Block& block = thread_block();
    if (block.size < bytes) {
      block.release();
      block.size = bytes + bytes / 2;
      block.ptr = ::operator new[](block.size, std::align_val_t(kScratchAlign));
    }
    ptr_ = block.ptr;
  }
  ~Scratch() {
    if (owned_ != nullptr) ::operator delete[](owned_, std::align_val_t(kScratchAlign));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // Carves consecutive, 64-byte aligned arrays out of the block.
  template <typename T>
  T* take(int64_t count) {
    T* out = reinterpret_cast<T*>(static_cast<char*>(ptr_) + used_);
    used_ += round(static_cast<size_t>(count) * sizeof(T));
    return out;
  }

  static size_t round(size_t bytes) { return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;
    void release() {
      if (ptr != nullptr) ::operator delete[](ptr, std::align_val_t(kScratchAlign));
      ptr = nullptr;
      size = 0;
    }
    ~Block() { release(); }
  };
  static Block& thread_block() {
    thread_local Block block;
    return block;
  }

  void* ptr_ = nullptr;
  void* owned_ = nullptr;
  size_t used_ = 0;
};

}  // namespace cpu
}  // namespace pdcr
