// Native TLS (OpenSSL 3): the server's SSL_CTX, rebuilt on SIGHUP, and one
// connection's TLS stream over a non-blocking socket.
//
// TlsStream is the engine of the connection's second ConnectionIo (TlsIo,
// tls_io.h): it does the handshake inside the first
// recv/send, and, as Redis's tls.c, tells its owner which socket events it
// needs. A read may need the socket to be writable (a handshake message that
// did not fit) and a write may need it readable; the connection's state
// machine only ever says "I want to read/write" and never learns of it.
#pragma once

#include "connection_io.h"
#include "metrics.h"
#include "result.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace kv {

struct TlsFiles {
  std::string cert;       // PEM certificate chain, leaf first
  std::string key;        // PEM private key of the leaf
  std::string client_ca;  // empty: no client certificates asked for
};

// Why a handshake did not complete, for kvcache_tls_handshake_failures_total.
enum class TlsFailure : uint8_t {
  plain_http,        // an HTTP request sent to the TLS port
  no_client_cert,    // mutual TLS: the client sent none
  bad_client_cert,   // mutual TLS: it did not verify
  protocol,          // no shared version, cipher or ALPN protocol; garbage; a bad message
  incomplete,        // the client left or stalled (read timeout) before the end
};
constexpr size_t kTlsFailureCount = 5;

inline constexpr std::string_view kTlsFailureNames[kTlsFailureCount] = {"plain_http", "no_client_cert",
                                                                        "bad_client_cert", "protocol", "incomplete"};
inline constexpr std::string_view kTlsVersionNames[] = {"TLSv1.2", "TLSv1.3"};
inline constexpr std::string_view kTlsResumedNames[] = {"false", "true"};
inline constexpr std::string_view kTlsReloadResults[] = {"ok", "error"};
inline constexpr MetricLabel kTlsHandshakeLabels[] = {label<kTlsVersionNames>("version"),
                                                      label<kTlsResumedNames>("resumed")};
inline constexpr MetricLabel kTlsFailureLabels[] = {label<kTlsFailureNames>("reason")};
inline constexpr MetricLabel kTlsReloadLabels[] = {label<kTlsReloadResults>("result")};

// The TLS layer's part of /metrics: written by every loop (handshakes are
// per connection, not per request, so an atomic add is cheap enough), read
// by the scraper (SharedCounters over this table, slots below).
inline constexpr MetricDecl kTlsMetricDecls[] = {
    {"kvcache_tls_handshakes_total", MetricType::counter, "TLS handshakes completed, by version and resumption.",
     kTlsHandshakeLabels},
    {"kvcache_tls_handshake_failures_total", MetricType::counter, "TLS handshakes that did not complete, by reason.",
     kTlsFailureLabels},
    {"kvcache_tls_ktls_connections_total", MetricType::counter,
     "TLS connections whose records the kernel encrypts (kTLS)."},
    {"kvcache_tls_reloads_total", MetricType::counter, "Certificate reloads on SIGHUP, by result.", kTlsReloadLabels},
    {"kvcache_tls_certificate_expiry_timestamp_seconds", MetricType::gauge,
     "notAfter of the certificate served (Unix time)."},
};
inline constexpr MetricTable kTlsMetrics(kTlsMetricDecls);
namespace tls_slot {
// [TLS 1.2, 1.3][full, resumed]
inline constexpr size_t kHandshakes = slot_of(kTlsMetrics, "kvcache_tls_handshakes_total");
inline constexpr size_t kFailures = slot_of(kTlsMetrics, "kvcache_tls_handshake_failures_total");  // [TlsFailure]
inline constexpr size_t kKtlsConnections = slot_of(kTlsMetrics, "kvcache_tls_ktls_connections_total");
inline constexpr size_t kReloads = slot_of(kTlsMetrics, "kvcache_tls_reloads_total");  // [ok, error]
inline constexpr size_t kCertificateExpiry = slot_of(kTlsMetrics, "kvcache_tls_certificate_expiry_timestamp_seconds");
}  // namespace tls_slot
using TlsMetrics = SharedCounters;

std::string_view tls_failure_name(TlsFailure failure);

// The server's TLS configuration: TLS 1.2 and 1.3, ALPN http/1.1 only,
// session tickets and a session cache, no renegotiation, idle buffers
// released, kernel TLS asked for. Shared by all loops; SIGHUP builds a new
// SSL_CTX and swaps it in for new connections (existing ones keep theirs:
// an SSL holds a reference to its SSL_CTX).
class TlsContext {
 public:
  // Loads and checks the files (readable, PEM, key matches the certificate,
  // CA bundle parses); a failure says which flag's file and what to fix.
  static Result<std::unique_ptr<TlsContext>> load(const TlsFiles& files);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Re-reads the files; a bad one keeps the current context (the failure
  // says why, as load's). Session ticket keys carry over, so clients resume
  // across a rotation.
  Result<void> reload();

  // A server-side SSL for an accepted socket, on the current context; null
  // if OpenSSL cannot allocate one.
  SSL* new_ssl(int fd);

  // The session cache at its fullest (kSessionCacheSize sessions of up to
  // ~2.5 KiB with a client certificate), set aside from --memory-limit.
  static constexpr uint64_t kSessionCacheBytes = 5 << 20;

  TlsMetrics& metrics() { return metrics_; }
  const TlsMetrics& metrics() const { return metrics_; }
  // Whether this kernel offers the "tls" TCP upper layer (kTLS); OpenSSL
  // falls back to user-space records when it does not.
  static bool kernel_tls_available();

 private:
  TlsContext(const TlsFiles& files, SSL_CTX* ctx) : files_(files), ctx_(ctx) {}
  const TlsFiles files_;
  std::mutex mutex_;
  SSL_CTX* ctx_;  // guarded by mutex_; one reference owned here
  TlsMetrics metrics_{kTlsMetrics};
};

// One connection's TLS over a non-blocking socket it does not own.
class TlsStream {
 public:
  // Takes ownership of `ssl` (from TlsContext::new_ssl).
  TlsStream(SSL* ssl, TlsMetrics& metrics);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Both complete the handshake first. recv reads records until `size` bytes
  // or the socket has no more; eof is the client's close_notify or FIN.
  IoResult recv(char* buffer, size_t size);
  // Like recv, but the bytes stay to be received again. SSL_peek sees one
  // record at most and a request may span several, so peek decrypts records
  // into a stash of up to `size` bytes that recv hands out first: it holds
  // what OpenSSL's read buffer would otherwise hold, and is charged as such.
  IoResult peek(char* buffer, size_t size);
  IoResult send(const char* data, size_t size);
  // close_notify, best effort (the connection's lingering close follows).
  void shutdown();
  // The handshake outlived the read timeout: the next recv/send fails.
  void handshake_timed_out();
  // Counts an unfinished handshake as `incomplete` (call once, at close).
  void closing();

  // The connection's interest.
  void want_read(bool on) { conn_read_ = on; }
  void want_write(bool on) { conn_write_ = on; }
  // The socket events that interest needs now.
  bool socket_read() const { return (conn_read_ && !read_wants_write_) || write_wants_read_; }
  bool socket_write() const { return (conn_write_ && !write_wants_read_) || read_wants_write_; }
  struct Dispatch {
    bool read;   // run the connection's read handler
    bool write;  // run its write handler
  };
  // What the owner's socket events must be now: the whole translation of
  // the connection's interest, in one call.
  struct Interest {
    bool read;        // poll the socket for readable
    bool write;       // poll it for writable
    bool rerun_read;  // run the read handler again although the socket will not signal (input_buffered)
  };
  Interest interest() const { return {socket_read(), socket_write(), input_buffered()}; }
  // Maps a socket event to the connection's handlers.
  Dispatch on_event(bool readable, bool writable);
  // recv stopped with whole records left in OpenSSL's buffer: the socket
  // will not signal them, so the owner must run the read handler again.
  bool input_buffered() const { return conn_read_ && (buffered_ || !stash_.empty()); }

  bool handshake_done() const { return handshake_done_; }
  // Handshaking, records half read or half written, or bytes peeked at.
  bool busy() const { return records_held() || !stash_.empty(); }
  // The TLS state and record buffers this connection holds (estimated from
  // measured constants: OpenSSL does not tell per connection).
  size_t held_bytes() const;

  // Measured by tls_test ("held_bytes", OpenSSL 3.0.19, P-256, TLS 1.2 and
  // 1.3): an idle SSL keeps 12.6-13.5 KiB once SSL_MODE_RELEASE_BUFFERS has
  // freed its record buffers (7.4 KiB of it the SSL struct); the handshake
  // peaks 57-62 KiB above that (more when the client's first request arrives
  // with its Finished: read and write buffers at once), a record in flight
  // needs its 16.7 KiB buffers. The margin covers other interleavings.
  static constexpr size_t kIdleBytes = 14 * 1024;
  static constexpr size_t kActiveBytes = 72 * 1024;
  // What a new connection holds until its handshake is done: admission
  // (LoopContext::make_room) asks the buffer budget for this much.
  static constexpr size_t kNewBytes = kIdleBytes + kActiveBytes;

 private:
  // Sets wants_write when it waits for the socket to take its messages.
  IoResult handshake(bool& wants_write);
  // Reads records into `buffer` until it is full or OpenSSL's buffer is
  // empty (the socket, level-triggered, says when more comes), or with
  // `until_blocked` until the socket has no more.
  IoResult read(char* buffer, size_t size, bool until_blocked);
  // The state that needs OpenSSL's record buffers (kActiveBytes).
  bool records_held() const { return !handshake_done_ || buffered_ || write_blocked_; }
  IoResult fail(TlsFailure reason);

  SSL* ssl_;
  TlsMetrics& metrics_;
  bool conn_read_ = false;
  bool conn_write_ = false;
  bool read_wants_write_ = false;
  bool write_wants_read_ = false;
  bool buffered_ = false;
  bool handshake_done_ = false;
  bool failed_ = false;    // counted as a failure already; every call now errors
  bool timed_out_ = false;
  bool eof_ = false;       // the client's close_notify or FIN was seen
  bool write_blocked_ = false;  // a record waits in OpenSSL's write buffer
  std::string stash_;           // decrypted by peek, not yet received
};

}  // namespace kv
