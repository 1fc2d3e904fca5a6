#include "snapshot_format.h"

#include "validation.h"

#include <fcntl.h>
#include <isa-l/crc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/core.h>

#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

namespace kv::snapshot {
namespace {

// The file is little-endian; so is every machine this is built for.
static_assert(std::endian::native == std::endian::little);

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

template <typename T>
T get(const char* in) {
  T value;
  std::memcpy(&value, in, sizeof value);
  return value;
}

std::string directory_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// A block's CRC covers its length and count fields, then its payload.
uint32_t block_crc(const char* length_and_count, std::string_view payload) {
  uint32_t crc = crc32_iscsi(reinterpret_cast<unsigned char*>(const_cast<char*>(length_and_count)), 8, 0xFFFFFFFF);
  return ~crc32_iscsi(reinterpret_cast<unsigned char*>(const_cast<char*>(payload.data())),
                      static_cast<int>(payload.size()), crc);
}

// Walks a block's records; false at the first malformed one, saying why in
// *reason unless reason is null (the scan tries many candidates quietly).
bool parse_records(std::string_view payload, uint32_t count, absl::FunctionRef<void(const Record&)> on_record,
                   std::string* reason) {
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (payload.size() - pos < kRecordHeaderSize) {
      if (reason) *reason = fmt::format("record {} of {} runs past the block", i, count);
      return false;
    }
    uint16_t key_size = get<uint16_t>(payload.data() + pos);
    uint16_t value_size = get<uint16_t>(payload.data() + pos + 2);
    int64_t expires = get<int64_t>(payload.data() + pos + 4);
    pos += kRecordHeaderSize;
    if (payload.size() - pos < size_t{key_size} + value_size) {
      if (reason) *reason = fmt::format("record {} of {} runs past the block", i, count);
      return false;
    }
    Record record{payload.substr(pos, key_size), payload.substr(pos + key_size, value_size), expires};
    pos += size_t{key_size} + value_size;
    // The same rules as the API: a snapshot cannot smuggle in what a client could not put.
    if (const char* error = key_error(record.key)) {
      if (reason) *reason = fmt::format("record {}: {}", i, error);
      return false;
    }
    if (const char* error = value_error(record.value)) {
      if (reason) *reason = fmt::format("record {}: {}", i, error);
      return false;
    }
    if (expires < 0) {
      if (reason) *reason = fmt::format("record {}: negative expiry", i);
      return false;
    }
    on_record(record);
  }
  if (pos != payload.size()) {
    if (reason) *reason = fmt::format("{} bytes after the last record", payload.size() - pos);
    return false;
  }
  return true;
}

// The reader's view of the file: the bytes from offset() on, as many as the
// last fill() asked for (fewer only at the end of the file). It reads in
// large pieces, grows to the largest block it must hold whole (at most
// kBlockHeaderSize + kMaxBlockBytes and a read's worth) and moves what is
// left to the front before reading more. No zero-filling: the fuzzer makes
// one per input.
class Window {
 public:
  explicit Window(Source& source) : source_(source) {}
  // At least n bytes from data() on, or all that is left; -1 on an I/O error.
  long fill(size_t n) {
    if (size() >= n || eof_) return static_cast<long>(size());
    if (capacity_ - start_ < n) {
      size_t capacity = std::max(capacity_, n + kReadPiece);
      if (capacity != capacity_) {
        auto bigger = std::make_unique_for_overwrite<char[]>(capacity);
        if (size() > 0) std::memcpy(bigger.get(), data(), size());
        buffer_ = std::move(bigger);
        capacity_ = capacity;
      } else if (size() > 0) {
        std::memmove(buffer_.get(), data(), size());
      }
      end_ -= start_;
      start_ = 0;
    }
    while (size() < n) {
      long got = source_.read(buffer_.get() + end_, capacity_ - end_);
      if (got < 0) return -1;
      if (got == 0) {
        eof_ = true;
        break;
      }
      end_ += static_cast<size_t>(got);
    }
    return static_cast<long>(size());
  }
  const char* data() const { return buffer_.get() + start_; }
  size_t size() const { return end_ - start_; }
  uint64_t offset() const { return offset_; }
  void consume(size_t n) {
    start_ += n;
    offset_ += n;
  }

 private:
  static constexpr size_t kReadPiece = 256 * 1024;
  Source& source_;
  std::unique_ptr<char[]> buffer_;
  size_t capacity_ = 0;
  size_t start_ = 0;  // data() is buffer_ + start_, at file offset offset_
  size_t end_ = 0;
  uint64_t offset_ = 0;
  bool eof_ = false;
};

enum class Verdict { good, bad, truncated, io_error };

struct Block {
  Verdict verdict;
  uint32_t length = 0;
  uint32_t count = 0;
};

// The CRC of the end block (length 0, count 0): what a zeroed stretch of a
// file would have to carry to pass for one.
uint32_t end_block_crc() {
  static const uint32_t crc = [] {
    char zeros[8] = {};
    return block_crc(zeros, {});
  }();
  return crc;
}

// Whether the bytes at p (at least kBlockHeaderSize + kRecordHeaderSize of
// them, or the whole rest of the file) can start a block: the cheap tests
// the scan makes at every offset before it reads a payload or computes a CRC.
bool plausible_block(const char* p, size_t available) {
  uint32_t length = get<uint32_t>(p + 4);
  uint32_t count = get<uint32_t>(p + 8);
  if (count == 0) return length == 0 && get<uint32_t>(p) == end_block_crc();
  if (length > kMaxBlockBytes || length / kRecordHeaderSize < count) return false;
  if (available < kBlockHeaderSize + kRecordHeaderSize) return false;
  // The first record's lengths fit the API's limits and the block.
  uint16_t key_size = get<uint16_t>(p + kBlockHeaderSize);
  uint16_t value_size = get<uint16_t>(p + kBlockHeaderSize + 2);
  return key_size >= 1 && key_size <= kMaxKeyBytes && value_size <= kMaxValueBytes &&
         kRecordHeaderSize + key_size + value_size <= length;
}

// Checks the whole block at the window's start (reading it into the
// window) without handing out any record; reason says what is wrong, unless null.
Block check_block(Window& window, std::string* reason) {
  long have = window.fill(kBlockHeaderSize);
  if (have < 0) return {Verdict::io_error};
  if (static_cast<size_t>(have) < kBlockHeaderSize) {
    if (reason) *reason = have == 0 ? "file ends without the end block (truncated)" : "block header cut short (truncated)";
    return {Verdict::truncated};
  }
  Block block{Verdict::bad, get<uint32_t>(window.data() + 4), get<uint32_t>(window.data() + 8)};
  if (block.length > kMaxBlockBytes) {
    if (reason) *reason = fmt::format("block length {} over the {} limit", block.length, kMaxBlockBytes);
    return block;
  }
  have = window.fill(kBlockHeaderSize + block.length);
  if (have < 0) return {Verdict::io_error};
  if (static_cast<size_t>(have) < kBlockHeaderSize + block.length) {
    if (reason) *reason = "block cut short (truncated)";
    block.verdict = Verdict::truncated;
    return block;
  }
  std::string_view payload(window.data() + kBlockHeaderSize, block.length);
  if (block_crc(window.data() + 4, payload) != get<uint32_t>(window.data())) {
    if (reason) *reason = "block checksum mismatch";
    return block;
  }
  if (block.count == 0) {
    if (block.length != 0) {
      if (reason) *reason = "end block with a payload";
      return block;
    }
  } else if (!parse_records(payload, block.count, [](const Record&) {}, reason)) {
    return block;
  }
  block.verdict = Verdict::good;
  return block;
}

// From a bad block at the window's start: moves the window to the next
// offset where a whole block verifies (good), or to the end of the file
// (truncated). Every offset is looked at; most fail plausible_block at once.
Block scan(Window& window) {
  window.consume(1);
  for (;;) {
    long have = window.fill(kBlockHeaderSize + kRecordHeaderSize);
    if (have < 0) return {Verdict::io_error};
    size_t size = static_cast<size_t>(have);
    if (size < kBlockHeaderSize) {
      window.consume(size);
      return {Verdict::truncated};
    }
    // The offsets plausible_block can judge with what the window holds (it
    // holds less than asked for only at the end of the file), without a call to fill() per byte.
    size_t span = size < kBlockHeaderSize + kRecordHeaderSize ? size - kBlockHeaderSize + 1
                                                              : size - (kBlockHeaderSize + kRecordHeaderSize) + 1;
    const char* p = window.data();
    size_t skip = 0;
    while (skip < span && !plausible_block(p + skip, size - skip)) ++skip;
    window.consume(skip);
    if (skip == span) continue;
    Block block = check_block(window, nullptr);
    if (block.verdict == Verdict::good || block.verdict == Verdict::io_error) return block;
    window.consume(1);
  }
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  // ISA-L takes an int length and a non-const pointer; it does not write.
  auto* bytes = static_cast<unsigned char*>(const_cast<void*>(data));
  uint32_t crc = 0xFFFFFFFF;
  while (size > 0) {
    int chunk = size > INT_MAX ? INT_MAX : static_cast<int>(size);
    crc = crc32_iscsi(bytes, chunk, crc);
    bytes += chunk;
    size -= static_cast<size_t>(chunk);
  }
  return ~crc;
}

// ---------------------------------------------------------------- writer

const FileCalls& system_file_calls() {
  static const FileCalls calls{::fsync, ::close};
  return calls;
}

Writer::~Writer() { abandon(); }

bool Writer::fail(std::string_view what, int error_number) {
  error_ = fmt::format("{} {}: {}", what, tmp_path_, std::strerror(error_number));
  return false;
}

bool Writer::open(const std::string& path, int64_t created_unix_ms) {
  abandon();
  path_ = path;
  tmp_path_ = path + ".tmp";
  dir_path_ = directory_of(path);
  created_unix_ms_ = created_unix_ms;
  records_ = 0;
  bytes_ = 0;
  replaced_ = false;
  error_.clear();
  error_.reserve(64);  // commit()'s last words when memory has run out fit in it
  block_records_ = 0;
  block_.clear();
  block_.reserve(buffer_bytes_);
  // A stale PATH.tmp (from a crash) is replaced, never appended to.
  unlink(tmp_path_.c_str());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd_ < 0) return fail("create", errno);
  tmp_exists_ = true;
  // The real header is written by commit(), once the count is known.
  char header[kHeaderSize] = {};
  return write_all(header, sizeof header);
}

void Writer::add(const Record& record) {
  put<uint16_t>(block_, static_cast<uint16_t>(record.key.size()));
  put<uint16_t>(block_, static_cast<uint16_t>(record.value.size()));
  put<int64_t>(block_, record.expires_unix_ms);
  block_ += record.key;
  block_ += record.value;
  ++block_records_;
}

bool Writer::write_all(const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd_, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write", errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
    bytes_ += static_cast<size_t>(n);
  }
  return true;
}

bool Writer::write_block(uint32_t count, std::string_view payload) {
  char head[kBlockHeaderSize];
  uint32_t length = static_cast<uint32_t>(payload.size());
  std::memcpy(head + 4, &length, 4);
  std::memcpy(head + 8, &count, 4);
  uint32_t crc = block_crc(head + 4, payload);
  std::memcpy(head, &crc, 4);
  return write_all(head, sizeof head) && write_all(payload.data(), payload.size());
}

bool Writer::flush() {
  if (block_records_ == 0) return true;
  bool ok = write_block(block_records_, block_);
  records_ += block_records_;
  block_records_ = 0;
  block_.clear();
  return ok;
}

bool Writer::commit() {
  if (!flush() || !write_block(0, {})) return false;
  std::string header(kMagic, sizeof kMagic);
  put<uint32_t>(header, kVersion);
  put<uint32_t>(header, 0);
  put<int64_t>(header, created_unix_ms_);
  put<uint64_t>(header, records_);
  put<uint32_t>(header, crc32c(header.data(), header.size()));
  if (pwrite(fd_, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size())) {
    return fail("write header of", errno);
  }
  if (calls_.fsync(fd_) != 0) return fail("fsync", errno);
  int fd = std::exchange(fd_, -1);
  // After a failed close the data may not be on disk: the .tmp goes too.
  if (calls_.close(fd) != 0) {
    int error_number = errno;
    abandon();
    return fail("close", error_number);
  }
  if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    int error_number = errno;
    abandon();
    return fail("rename", error_number);
  }
  replaced_ = true;
  tmp_exists_ = false;
  // The rename is durable only once the directory is on disk too.
  int dir_fd = ::open(dir_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || calls_.fsync(dir_fd) != 0) {
    int error_number = errno;
    if (dir_fd >= 0) calls_.close(dir_fd);
    try {
      error_ = fmt::format(
          "{} is the new snapshot, but fsync of its directory {} failed: {}; a crash before the directory reaches "
          "the disk may bring back the previous one",
          path_, dir_path_, std::strerror(error_number));
    } catch (const std::bad_alloc&) {
      error_ = "fsync of the snapshot's directory failed";  // within the capacity open() reserved
    }
    return false;
  }
  calls_.close(dir_fd);
  block_.clear();
  block_.shrink_to_fit();
  return true;
}

void Writer::abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (tmp_exists_) {
    unlink(tmp_path_.c_str());
    tmp_exists_ = false;
  }
  block_.clear();
  block_.shrink_to_fit();
}

// ---------------------------------------------------------------- reader

long FdSource::read(char* out, size_t size) {
  for (;;) {
    ssize_t n = ::read(fd_, out, size);
    if (n >= 0 || errno != EINTR) return n;
  }
}

long MemorySource::read(char* out, size_t size) {
  size_t n = std::min(size, bytes_.size());
  std::memcpy(out, bytes_.data(), n);
  bytes_.remove_prefix(n);
  return static_cast<long>(n);
}

std::string_view status_name(ReadStatus status) {
  switch (status) {
    case ReadStatus::complete: return "complete";
    case ReadStatus::damaged: return "damaged";
    case ReadStatus::not_snapshot: return "not a snapshot";
    case ReadStatus::unknown_version: return "unknown version";
    case ReadStatus::io_error: return "read error";
  }
  return "?";
}

ReadResult read(Source& source, absl::FunctionRef<void(const Record&)> on_record) {
  ReadResult result;
  auto stop = [&](ReadStatus status, std::string reason) {
    result.status = status;
    result.reason = std::move(reason);
    return result;
  };
  Window window(source);
  long got = window.fill(kHeaderSize);
  if (got < 0) return stop(ReadStatus::io_error, std::strerror(errno));
  const char* header = window.data();
  if (static_cast<size_t>(got) < sizeof kMagic || std::memcmp(header, kMagic, sizeof kMagic) != 0) {
    return stop(ReadStatus::not_snapshot, "no snapshot magic at the start");
  }
  if (static_cast<size_t>(got) < kHeaderSize) return stop(ReadStatus::not_snapshot, "header cut short");
  uint32_t version = get<uint32_t>(header + 8);
  // The version comes before the header CRC: a later format may lay the header out differently.
  if (version != kVersion) {
    return stop(ReadStatus::unknown_version, fmt::format("format version {} (this build reads {})", version, kVersion));
  }
  if (crc32c(header, kHeaderSize - 4) != get<uint32_t>(header + kHeaderSize - 4)) {
    return stop(ReadStatus::not_snapshot, "header checksum mismatch");
  }
  result.created_unix_ms = get<int64_t>(header + 16);
  result.header_records = get<uint64_t>(header + 24);
  window.consume(kHeaderSize);
  result.offset = kHeaderSize;
  result.bytes = kHeaderSize;

  auto damaged = [&](uint64_t begin, uint64_t end, std::string reason) {
    if (result.damaged_ranges++ == 0) {
      result.status = ReadStatus::damaged;
      result.offset = begin;
      result.reason = reason;
    }
    if (result.damage.size() < kMaxDamageListed) result.damage.push_back({begin, end, std::move(reason)});
  };
  std::string reason;
  for (;;) {
    Block block = check_block(window, &reason);
    if (block.verdict == Verdict::io_error) {
      result.offset = window.offset();
      return stop(ReadStatus::io_error, std::strerror(errno));
    }
    if (block.verdict == Verdict::good) {
      size_t size = kBlockHeaderSize + block.length;
      result.bytes += size;
      if (block.count == 0) {
        if (result.damaged_ranges == 0 && result.records != result.header_records) {
          damaged(window.offset(), window.offset() + size,
                  fmt::format("header counts {} records, the blocks hold {}", result.header_records, result.records));
        }
        if (result.damaged_ranges == 0) result.offset = window.offset() + size;
        return result;
      }
      parse_records(std::string_view(window.data() + kBlockHeaderSize, block.length), block.count, on_record, nullptr);
      result.records += block.count;
      window.consume(size);
      if (result.damaged_ranges == 0) result.offset = window.offset();
      continue;
    }
    // A damaged range starts here and ends where a block verifies again.
    uint64_t begin = window.offset();
    bool at_end = block.verdict == Verdict::truncated && window.size() == 0;
    if (!at_end) block = scan(window);
    if (block.verdict == Verdict::io_error) {
      result.offset = window.offset();
      return stop(ReadStatus::io_error, std::strerror(errno));
    }
    damaged(begin, window.offset(), reason);
    if (block.verdict != Verdict::good) return result;
  }
}

}  // namespace kv::snapshot
