// tensorstore_fs: a TensorFlow kernel that gathers fixed-shape tensor rows straight from shard files.
//
// A fixed-shape tensor column of a local shard is one plain, uncompressed run of bytes per row
// group (tensorstore_fs/pages.py). The tf.data adapter hands this kernel, per batch, the file and
// byte offset of every row. A batch whose rows lie back to back at a 64-byte aligned offset (a
// sequential batch of a file written with aligned values, tensorstore_fs/align.py) is handed out
// as the file's mapped bytes themselves, read-only, which TensorFlow's ops never write to (see
// MappedRows): no copy. Any other batch is copied out of read-only maps
// of the files (kept open across batches) into a recycled, 64-byte aligned output. Both run inside
// TensorFlow's own threads: no Python, no GIL and no page faults on fresh output memory per batch.
//
// Built on first use by tensorstore_fs/readers/_tf_native.py against the installed TensorFlow.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensorflow/core/framework/allocation_description.pb.h"
#include "tensorflow/core/framework/allocator.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace tsfs {

using ::tensorflow::Allocator;
using ::tensorflow::DataType;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

constexpr size_t kAlign = 64;
constexpr size_t kKeepFreeBytes = size_t(256) << 20;  // recycled outputs kept for reuse
// whole-file maps kept open (least recently used go, and their pages leave this process with them)
constexpr size_t kMaxMaps = 8;

// Outputs come from here: a block TensorFlow lets go of is reused for the next output of the same
// size (already faulted in), so a batch costs one memcpy, not a memcpy plus a page fault per 4 KiB.
class RecyclingAllocator : public Allocator {
 public:
  std::string Name() override { return "tsfs_recycling"; }
  void* AllocateRaw(size_t alignment, size_t num_bytes) override {
    size_t size = (num_bytes + kAlign - 1) / kAlign * kAlign;
    if (size == 0) size = kAlign;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        free_bytes_ -= size;
        sizes_[p] = size;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, size);
    if (p == nullptr) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = size;
    return p;
  }
  void DeallocateRaw(void* ptr) override {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(ptr);
    if (it == sizes_.end()) {  // not ours (never happens): hand it back to the C library
      std::free(ptr);
      return;
    }
    size_t size = it->second;
    sizes_.erase(it);
    if (free_bytes_ + size <= kKeepFreeBytes) {
      free_[size].push_back(ptr);
      free_bytes_ += size;
    } else {
      std::free(ptr);
    }
  }

 private:
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t free_bytes_ = 0;
};

RecyclingAllocator* allocator() {
  static RecyclingAllocator* a = new RecyclingAllocator();  // outlives every tensor: never freed
  return a;
}

struct FileMap {
  const char* data = nullptr;
  size_t size = 0;
  ~FileMap() {
    if (data != nullptr && size > 0) munmap(const_cast<char*>(data), size);
  }
};

// Read-only whole-file maps, kept across batches and epochs: mapping per batch costs more than the
// copy, and a kept map's pages stay in this process's page tables, so a later epoch over the same
// files copies without faulting them in again. Resident memory for them is bounded by the kMaxMaps
// most recently read files (clean page-cache pages: the kernel can always drop them).
class Maps {
 public:
  absl::Status Get(const std::string& path, std::shared_ptr<FileMap>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if (it->first == path) {
        lru_.splice(lru_.begin(), lru_, it);
        *out = it->second;
        return absl::OkStatus();
      }
    }
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::NotFoundError("tensorstore_fs: cannot open shard file " + path + ": " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return absl::DataLossError("tensorstore_fs: cannot stat shard file " + path + ": " + std::strerror(err));
    }
    auto m = std::make_shared<FileMap>();
    m->size = static_cast<size_t>(st.st_size);
    if (m->size > 0) {
      void* a = mmap(nullptr, m->size, PROT_READ, MAP_SHARED, fd, 0);
      if (a == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        m->size = 0;
        return absl::DataLossError("tensorstore_fs: cannot map shard file " + path + ": " + std::strerror(err));
      }
      m->data = static_cast<const char*>(a);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
    lru_.emplace_front(path, m);
    while (lru_.size() > kMaxMaps) lru_.pop_back();  // gathers still copying hold their own reference
    *out = m;
    return absl::OkStatus();
  }
 private:
  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<FileMap>>> lru_;
};

Maps* maps() {
  static Maps* m = new Maps();
  return m;
}

// A batch that is one aligned run of a kept map: the tensor's memory is the file's page cache,
// and the map stays mapped while any tensor uses it (even after it left the kept ones).
//
// The pages are mapped read-only, so TensorFlow must never write into them. It writes into an
// input only where it may reuse the input's buffer for an op's output in place, which it does
// only when that buffer, and its root buffer, have a reference count of one (and own their memory:
// Tensor::RefCountIsOne). A slice of a batch (Tensor::Slice, strided slices) is a SubBuffer whose
// root is this buffer. So Pinned below holds one extra reference to every mapped batch while
// anything else does: the count never reads one, for the batch or for any slice of it, and
// TensorFlow copies instead. (Ops that alias their input unconditionally, tf.raw_ops.InplaceUpdate
// and friends, and writes through DLPack are not covered: TSFS_TF_ZERO_COPY=0 copies batches.)
class MappedRows : public ::tensorflow::TensorBuffer {
 public:
  MappedRows(std::shared_ptr<FileMap> map, const char* data, size_t size)
      : TensorBuffer(const_cast<char*>(data)), map_(std::move(map)), size_(size) {}
  size_t size() const override { return size_; }
  TensorBuffer* root_buffer() override { return this; }
  void FillAllocationDescription(::tensorflow::AllocationDescription* proto) const override {
    proto->set_requested_bytes(static_cast<int64_t>(size_));
    proto->set_allocator_name("tsfs_file_map");
  }
  bool OwnsMemory() const override { return false; }

 private:
  std::shared_ptr<FileMap> map_;
  size_t size_;
};

// The extra references of mapped batches. Sweep() lets go of those that nothing else holds any
// more (then nothing can take a new reference either: only a holder can copy a tensor), which
// frees them; every kernel call sweeps, so at most the batches made since the last call linger.
class Pinned {
 public:
  void Add(MappedRows* rows) {
    rows->Ref();
    std::lock_guard<std::mutex> lock(mu_);
    live_.push_back(rows);
  }
  void Sweep() {
    std::vector<MappedRows*> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t keep = 0;
      for (MappedRows* rows : live_) {
        if (rows->RefCountIsOne()) {
          done.push_back(rows);
        } else {
          live_[keep++] = rows;
        }
      }
      live_.resize(keep);
    }
    for (MappedRows* rows : done) rows->Unref();  // the last reference: unmaps if the map is gone
  }

 private:
  std::mutex mu_;
  std::vector<MappedRows*> live_;
};

Pinned* pinned() {
  static Pinned* p = new Pinned();
  return p;
}

REGISTER_OP("TsfsGatherRows")
    .Input("paths: string")
    .Input("file: int32")
    .Input("offset: int64")
    .Input("inline_rows: dtype")
    .Output("rows: dtype")
    .Attr("dtype: type")
    .Attr("row_shape: list(int) >= 0")
    .Attr("zero_copy: bool = true")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int64_t> row_shape;
      TF_RETURN_IF_ERROR(c->GetAttr("row_shape", &row_shape));
      std::vector<::tensorflow::shape_inference::DimensionHandle> dims = {c->UnknownDim()};
      for (int64_t d : row_shape) dims.push_back(c->MakeDim(d));
      c->set_output(0, c->MakeShape(dims));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Rows of a fixed-shape tensor column gathered from local shard files: row i is the
prod(row_shape) * sizeof(dtype) bytes at byte offset[i] of file paths[file[i]]. When inline_rows
has rows, they are the rows (the column could not be located in the files) and are passed on.
With zero_copy, rows that lie back to back at a 64-byte aligned offset are output as the read-only
mapped file bytes themselves.
)doc");

class GatherRowsOp : public OpKernel {
 public:
  explicit GatherRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int64_t> row_shape;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dtype", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("row_shape", &row_shape));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("zero_copy", &zero_copy_));
    row_bytes_ = ::tensorflow::DataTypeSize(dtype_);
    OP_REQUIRES(ctx, row_bytes_ > 0, absl::InvalidArgumentError("TsfsGatherRows: dtype has no fixed size"));
    for (int64_t d : row_shape) {
      OP_REQUIRES(ctx, d >= 0, absl::InvalidArgumentError("TsfsGatherRows: negative row dimension"));
      row_shape_.AddDim(d);
      row_bytes_ *= d;
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& paths = ctx->input(0);
    const Tensor& file = ctx->input(1);
    const Tensor& offset = ctx->input(2);
    const Tensor& inline_rows = ctx->input(3);
    pinned()->Sweep();
    if (inline_rows.dims() > 0 && inline_rows.dim_size(0) > 0) {
      ctx->set_output(0, inline_rows);
      return;
    }
    OP_REQUIRES(ctx, file.dims() == 1 && offset.dims() == 1 && file.dim_size(0) == offset.dim_size(0),
                absl::InvalidArgumentError("TsfsGatherRows: file and offset must be vectors of one length"));
    const int64_t n = file.dim_size(0);
    TensorShape shape({n});
    shape.AppendShape(row_shape_);
    auto files = file.flat<int32_t>();
    auto offsets = offset.flat<int64_t>();
    auto names = paths.flat<::tensorflow::tstring>();
    const size_t rb = static_cast<size_t>(row_bytes_);
    Tensor out;
    char* dst = nullptr;
    int64_t i = 0;
    while (i < n) {
      // a run of rows that are consecutive in one file is one copy
      int64_t j = i + 1;
      while (j < n && files(j) == files(i) && offsets(j) == offsets(j - 1) + row_bytes_) ++j;
      const int32_t f = files(i);
      OP_REQUIRES(ctx, f >= 0 && f < names.size(),
                  absl::InvalidArgumentError("TsfsGatherRows: file index out of range"));
      const std::string path(names(f));
      std::shared_ptr<FileMap> m;
      OP_REQUIRES_OK(ctx, maps()->Get(path, &m));
      const int64_t start = offsets(i);
      const size_t len = rb * static_cast<size_t>(j - i);
      OP_REQUIRES(ctx, start >= 0 && static_cast<size_t>(start) + len <= m->size,
                  absl::DataLossError("tensorstore_fs: shard file " + path + " ends before the rows its manifest "
                                      "places at byte " + std::to_string(start) + " (was it replaced or truncated?)"));
      const char* src = m->data + start;
      if (i == 0 && j == n && zero_copy_ && len > 0 && reinterpret_cast<uintptr_t>(src) % kAlign == 0) {
        MappedRows* rows = new MappedRows(m, src, len);
        pinned()->Add(rows);
        ctx->set_output(0, Tensor(dtype_, shape, rows));
        rows->Unref();  // the tensor and Pinned hold their own references
        return;
      }
      if (dst == nullptr) {
        out = Tensor(allocator(), dtype_, shape);
        OP_REQUIRES(ctx, out.IsInitialized(), absl::ResourceExhaustedError("TsfsGatherRows: cannot allocate the batch"));
        dst = static_cast<char*>(const_cast<void*>(static_cast<const void*>(out.tensor_data().data())));
      }
      std::memcpy(dst + rb * static_cast<size_t>(i), src, len);
      i = j;
    }
    if (dst == nullptr) {  // no rows
      out = Tensor(allocator(), dtype_, shape);
    }
    ctx->set_output(0, out);
  }

 private:
  DataType dtype_;
  TensorShape row_shape_;
  int64_t row_bytes_ = 0;
  bool zero_copy_ = true;
};

REGISTER_KERNEL_BUILDER(Name("TsfsGatherRows").Device(::tensorflow::DEVICE_CPU), GatherRowsOp);

}  // namespace tsfs
