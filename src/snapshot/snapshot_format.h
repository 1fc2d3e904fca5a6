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
//
// Damage: a block that does not verify (CRC, lengths, records) costs only
// itself. The reader scans forward byte by byte for the next offset where a
// whole block verifies (its length and count fit, its CRC matches, every
// record passes the API's rules) and goes on from there, as a stream with
// one CRC per frame resynchronises. Keys and values are ASCII and a block
// header is 12 bytes of CRC and small integers, so a false match needs a
// 32-bit CRC collision on bytes that also parse as valid records.
#pragma once

#include <absl/functional/function_ref.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

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
// The damaged ranges a ReadResult lists (it counts them all).
constexpr size_t kMaxDamageListed = 8;

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
  // open() reserves buffer_bytes for the block (at least block_target), so
  // that add() allocates nothing while a block stays within it.
  explicit Writer(size_t block_target = kBlockTarget, const FileCalls& calls = system_file_calls(),
                  size_t buffer_bytes = 0)
      : block_target_(block_target), buffer_bytes_(std::max(block_target, buffer_bytes)), calls_(calls) {}
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Creates PATH.tmp (replacing a stale one). False on error (see error()).
  // Like add(), it throws std::bad_alloc when memory runs out; the caller
  // abandon()s, which allocates nothing.
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
  // Removes PATH.tmp after a failure, a timeout or an exception (the
  // destructor calls it); the previous file stays. Allocates nothing.
  void abandon();

  uint64_t records() const { return records_; }
  uint64_t bytes() const { return bytes_; }
  const std::string& error() const { return error_; }

 private:
  bool fail(std::string_view what, int error_number);
  bool write_all(const char* data, size_t size);
  bool write_block(uint32_t count, std::string_view payload);

  const size_t block_target_;
  const size_t buffer_bytes_;
  const FileCalls& calls_;
  std::string path_;
  std::string tmp_path_;
  std::string dir_path_;  // ready before commit(), which then allocates nothing once PATH is replaced
  int fd_ = -1;
  bool tmp_exists_ = false;  // PATH.tmp is ours to remove (on any way out, an exception's too)
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
  damaged,          // a truncated file or bad blocks: the records of every block that verifies were read
  not_snapshot,     // bad magic or header: nothing read
  unknown_version,  // a snapshot of a format this build does not know: nothing read
  io_error,         // reading failed: the records before it were read
};

// A stretch of the file that holds no verifying block: [begin, end).
struct Damage {
  uint64_t begin = 0;
  uint64_t end = 0;    // the next block that verifies, or the end of the file
  std::string reason;  // what was wrong at begin
};

struct ReadResult {
  ReadStatus status = ReadStatus::complete;
  uint64_t offset = 0;  // where the (first) problem starts
  std::string reason;   // what it is
  uint64_t records = 0;
  uint64_t bytes = 0;   // bytes of the header and of the blocks that verified
  int64_t created_unix_ms = 0;
  uint64_t header_records = 0;  // the count the header gives (the file's records when whole)
  uint64_t damaged_ranges = 0;  // every one, of which `damage` lists the first kMaxDamageListed
  std::vector<Damage> damage;
  // Records the damage cost: what the header counts less what was read.
  uint64_t lost_records() const { return header_records > records ? header_records - records : 0; }
};

// Calls on_record for every record of every block that verifies, in file
// order, skipping the damaged ranges between them (see the top of this
// file). Never trusts a length it has not checked, and never holds more
// than one block plus one read's worth of the file.
ReadResult read(Source& source, absl::FunctionRef<void(const Record&)> on_record);

std::string_view status_name(ReadStatus status);

}  // namespace kv::snapshot
