// The snapshot file: a header, then blocks of records, each block with its
// own CRC32C, then an end block. Little-endian throughout.
//
//   header (36 bytes)
//   0        8         12         16            24              32
//   | magic  | version | reserved | created ms  | record count  | CRC32C of bytes 0..31 |
//
//   block: | CRC32C (4) | payload length (4) | record count (4) | payload |
//          the CRC covers length, count and payload; count 0 and length 0
//          is the end block.
//   record: | key length (2) | value length (2) | expiry (8) | key | value |
//          expiry: absolute wall-clock milliseconds since the epoch, 0 = never.
//
// Records come in LRU order, oldest first; a key may appear more than once
// (the last one wins). Knows nothing of the store: it moves bytes.
#pragma once

#include <absl/functional/function_ref.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace kv::snapshot {

constexpr char kMagic[8] = {'K', 'V', 'C', 'S', 'N', 'A', 'P', '\n'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderSize = 36;
constexpr size_t kBlockHeaderSize = 12;
constexpr size_t kRecordHeaderSize = 12;
// The writer closes a block once it holds this much; the reader refuses
// blocks over kMaxBlockBytes, so a bad length cannot make it allocate more.
constexpr size_t kBlockTarget = 64 * 1024;
constexpr size_t kMaxBlockBytes = 1 << 20;

// CRC32C (Castagnoli) through ISA-L's crc32_iscsi.
uint32_t crc32c(const void* data, size_t size);

struct Record {
  std::string_view key;
  std::string_view value;
  int64_t expires_unix_ms;  // 0 = never
};

// The file calls whose failure the writer must report truthfully: a seam
// through which tests make them fail (slab.h's MemoryCalls does the same).
struct FileCalls {
  int (*fsync)(int fd);
  int (*close)(int fd);
};
const FileCalls& system_file_calls();

// Writes PATH.tmp, then on commit: fsync, rename over PATH, fsync the
// directory. Until commit the previous file at PATH is untouched.
class Writer {
 public:
  // Tests pass a small block_target to get many blocks from a few records.
  explicit Writer(size_t block_target = kBlockTarget, const FileCalls& calls = system_file_calls())
      : block_target_(block_target), calls_(calls) {}
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Creates PATH.tmp (replacing a stale one). False on error (see error()).
  bool open(const std::string& path, int64_t created_unix_ms);
  // Appends a record to the block in memory (no I/O: callers copy under a
  // lock); once block_full(), flush() writes it out.
  void add(const Record& record);
  bool block_full() const { return block_.size() >= block_target_; }
  bool flush();
  // False on error; replaced() then tells whether PATH already holds the new
  // file (only its directory's fsync failed) or still the previous one.
  bool commit();
  bool replaced() const { return replaced_; }
  // Removes PATH.tmp after a failure or a timeout; the previous file stays.
  void abandon();

  uint64_t records() const { return records_; }
  uint64_t bytes() const { return bytes_; }
  const std::string& error() const { return error_; }

 private:
  bool fail(std::string_view what);
  bool write_all(const char* data, size_t size);
  bool write_block(uint32_t count, std::string_view payload);

  const size_t block_target_;
  const FileCalls& calls_;
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  std::string block_;  // payload of the block being filled
  uint32_t block_records_ = 0;
  uint64_t records_ = 0;
  uint64_t bytes_ = 0;
  int64_t created_unix_ms_ = 0;
  bool replaced_ = false;
  std::string error_;
};

// Where the reader takes its bytes from: a file, or memory in tests and fuzzing.
class Source {
 public:
  virtual ~Source() = default;
  // Up to size bytes; 0 at the end; -1 on an I/O error.
  virtual long read(char* out, size_t size) = 0;
};

class FdSource final : public Source {
 public:
  explicit FdSource(int fd) : fd_(fd) {}
  long read(char* out, size_t size) override;

 private:
  int fd_;
};

class MemorySource final : public Source {
 public:
  explicit MemorySource(std::string_view bytes) : bytes_(bytes) {}
  long read(char* out, size_t size) override;

 private:
  std::string_view bytes_;
};

enum class ReadStatus {
  complete,         // every record up to the end block
  damaged,          // a truncated file or a bad block: the records before it were read
  not_snapshot,     // bad magic or header: nothing read
  unknown_version,  // a snapshot of a format this build does not know: nothing read
  io_error,         // reading failed: the records before it were read
};

struct ReadResult {
  ReadStatus status = ReadStatus::complete;
  uint64_t offset = 0;  // where the problem starts
  std::string reason;   // what it is
  uint64_t records = 0;
  uint64_t bytes = 0;   // bytes of the blocks read whole
  int64_t created_unix_ms = 0;
};

// Calls on_record for every record of every good block in order, stopping
// at the first bad one. Never trusts a length it has not checked.
ReadResult read(Source& source, absl::FunctionRef<void(const Record&)> on_record);

std::string_view status_name(ReadStatus status);

}  // namespace kv::snapshot
