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

// Reads exactly size bytes; returns how many it got (short at the end of
// the file), or -1 on an I/O error.
long read_exact(Source& source, char* out, size_t size) {
  size_t got = 0;
  while (got < size) {
    long n = source.read(out + got, size - got);
    if (n < 0) return -1;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<long>(got);
}

// A block's CRC covers its length and count fields, then its payload.
uint32_t block_crc(const char* length_and_count, std::string_view payload) {
  uint32_t crc = crc32_iscsi(reinterpret_cast<unsigned char*>(const_cast<char*>(length_and_count)), 8, 0xFFFFFFFF);
  return ~crc32_iscsi(reinterpret_cast<unsigned char*>(const_cast<char*>(payload.data())),
                      static_cast<int>(payload.size()), crc);
}

// Walks a block's records; false at the first malformed one.
bool parse_records(std::string_view payload, uint32_t count, absl::FunctionRef<void(const Record&)> on_record,
                   std::string& reason) {
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (payload.size() - pos < kRecordHeaderSize) {
      reason = fmt::format("record {} of {} runs past the block", i, count);
      return false;
    }
    uint16_t key_size = get<uint16_t>(payload.data() + pos);
    uint16_t value_size = get<uint16_t>(payload.data() + pos + 2);
    int64_t expires = get<int64_t>(payload.data() + pos + 4);
    pos += kRecordHeaderSize;
    if (payload.size() - pos < size_t{key_size} + value_size) {
      reason = fmt::format("record {} of {} runs past the block", i, count);
      return false;
    }
    Record record{payload.substr(pos, key_size), payload.substr(pos + key_size, value_size), expires};
    pos += size_t{key_size} + value_size;
    // The same rules as the API: a snapshot cannot smuggle in what a client could not put.
    if (const char* error = key_error(record.key)) {
      reason = fmt::format("record {}: {}", i, error);
      return false;
    }
    if (const char* error = value_error(record.value)) {
      reason = fmt::format("record {}: {}", i, error);
      return false;
    }
    if (expires < 0) {
      reason = fmt::format("record {}: negative expiry", i);
      return false;
    }
    on_record(record);
  }
  if (pos != payload.size()) {
    reason = fmt::format("{} bytes after the last record", payload.size() - pos);
    return false;
  }
  return true;
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

bool Writer::fail(std::string_view what) {
  error_ = fmt::format("{} {}: {}", what, tmp_path_, std::strerror(errno));
  return false;
}

bool Writer::open(const std::string& path, int64_t created_unix_ms) {
  path_ = path;
  tmp_path_ = path + ".tmp";
  created_unix_ms_ = created_unix_ms;
  records_ = 0;
  bytes_ = 0;
  replaced_ = false;
  block_records_ = 0;
  block_.clear();
  block_.reserve(block_target_);
  // A stale PATH.tmp (from a crash) is replaced, never appended to.
  unlink(tmp_path_.c_str());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd_ < 0) return fail("create");
  // The real header is written by commit(), once the count is known.
  std::string header(kHeaderSize, '\0');
  return write_all(header.data(), header.size());
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
      return fail("write");
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
  if (pwrite(fd_, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size())) return fail("write header of");
  if (calls_.fsync(fd_) != 0) return fail("fsync");
  int fd = std::exchange(fd_, -1);
  // After a failed close the data may not be on disk: the .tmp goes too.
  if (calls_.close(fd) != 0) {
    fail("close");
    unlink(tmp_path_.c_str());
    return false;
  }
  if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    fail("rename");
    unlink(tmp_path_.c_str());
    return false;
  }
  replaced_ = true;
  // The rename is durable only once the directory is on disk too.
  std::string dir = directory_of(path_);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || calls_.fsync(dir_fd) != 0) {
    error_ = fmt::format(
        "{} is the new snapshot, but fsync of its directory {} failed: {}; a crash before the directory reaches the "
        "disk may bring back the previous one",
        path_, dir, std::strerror(errno));
    if (dir_fd >= 0) calls_.close(dir_fd);
    return false;
  }
  calls_.close(dir_fd);
  block_.clear();
  block_.shrink_to_fit();
  return true;
}

void Writer::abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  unlink(tmp_path_.c_str());
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
  char header[kHeaderSize];
  long got = read_exact(source, header, kHeaderSize);
  if (got < 0) return stop(ReadStatus::io_error, std::strerror(errno));
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
  uint64_t expected_records = get<uint64_t>(header + 24);
  result.offset = kHeaderSize;
  result.bytes = kHeaderSize;

  std::string payload;
  for (;;) {
    char head[kBlockHeaderSize];
    got = read_exact(source, head, sizeof head);
    if (got < 0) return stop(ReadStatus::io_error, std::strerror(errno));
    if (got == 0) return stop(ReadStatus::damaged, "file ends without the end block (truncated)");
    if (static_cast<size_t>(got) < sizeof head) return stop(ReadStatus::damaged, "block header cut short (truncated)");
    uint32_t length = get<uint32_t>(head + 4);
    uint32_t count = get<uint32_t>(head + 8);
    if (length > kMaxBlockBytes) {
      return stop(ReadStatus::damaged, fmt::format("block length {} over the {} limit", length, kMaxBlockBytes));
    }
    payload.resize(length);
    got = read_exact(source, payload.data(), length);
    if (got < 0) return stop(ReadStatus::io_error, std::strerror(errno));
    if (static_cast<size_t>(got) < length) return stop(ReadStatus::damaged, "block cut short (truncated)");
    if (block_crc(head + 4, payload) != get<uint32_t>(head)) return stop(ReadStatus::damaged, "block checksum mismatch");
    if (count == 0) {
      if (length != 0) return stop(ReadStatus::damaged, "end block with a payload");
      if (result.records != expected_records) {
        return stop(ReadStatus::damaged,
                    fmt::format("header counts {} records, the blocks hold {}", expected_records, result.records));
      }
      result.bytes += sizeof head;
      return result;
    }
    // Check the whole block before handing out any of it: a bad block adds nothing.
    std::string reason;
    if (!parse_records(payload, count, [](const Record&) {}, reason)) return stop(ReadStatus::damaged, reason);
    parse_records(payload, count, on_record, reason);
    result.records += count;
    result.offset += sizeof head + length;
    result.bytes = result.offset;
  }
}

}  // namespace kv::snapshot
