// The shipped plain-socket transport (socket_io.h) over a socketpair and a
// real libevent loop: events reach the connection, interest and the one
// timer go back to libevent, and close hands the transport to its owner.
#include "socket_io.h"

#include "fake_io.h"

#include <doctest/doctest.h>
#include <event2/event.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

using namespace kv;
using namespace kv::testing;

namespace {

constexpr std::string_view kPut = "POST /put HTTP/1.1\r\nContent-Length: 23\r\n\r\n{\"key\":\"k\",\"value\":\"v\"}";
constexpr std::string_view kGet = "GET /get?key=k HTTP/1.1\r\n\r\n";

// A SocketIo on one end of a socketpair, the client on the other, one event_base.
struct Plain : TestLoop {
  explicit Plain(ConnectionOptions options = {}) : TestLoop(8 << 20, options), base(event_base_new()) {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    client = fds[1];
    io = std::make_unique<SocketIo>(loop, base, fds[0], owner);
    io->connection().start();
  }
  ~Plain() {
    io.reset();
    if (client >= 0) ::close(client);
    event_base_free(base);
  }

  // Runs the loop without blocking until `done` or about two seconds.
  template <typename Done>
  void run_until(Done done) {
    for (int i = 0; i < 2000 && !done(); ++i) {
      event_base_loop(base, EVLOOP_NONBLOCK);
      if (!done()) usleep(1000);
    }
  }
  std::string receive() {
    std::string got;
    char buffer[4096];
    ssize_t n;
    while ((n = ::recv(client, buffer, sizeof buffer, 0)) > 0) got.append(buffer, n);
    return got;
  }

  event_base* base;
  TestOwner owner;
  int client = -1;
  std::unique_ptr<SocketIo> io;
};

}  // namespace

TEST_CASE("socket I/O: readable events reach the connection, the answers go out") {
  Plain p;
  REQUIRE(::send(p.client, kPut.data(), kPut.size(), 0) == static_cast<ssize_t>(kPut.size()));
  REQUIRE(::send(p.client, kGet.data(), kGet.size(), 0) == static_cast<ssize_t>(kGet.size()));
  std::string got;
  p.run_until([&] {
    got += p.receive();
    return got.find("\"value\":\"v\"") != std::string::npos;
  });
  CHECK(got.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(got.find("\"value\":\"v\"") != std::string::npos);
  CHECK(p.owner.events >= 1);
  CHECK(p.owner.retired == 0);
  CHECK(p.io->connection().reading());
}

TEST_CASE("socket I/O: the client's FIN closes the connection and retires the transport") {
  Plain p;
  ::shutdown(p.client, SHUT_WR);
  p.run_until([&] { return p.owner.retired > 0; });
  CHECK(p.owner.retired == 1);
  CHECK(p.io->connection().closed());
  char byte;
  CHECK(::recv(p.client, &byte, 1, 0) == 0);  // our FIN
}

TEST_CASE("socket I/O: the connection's deadline comes through the one timer") {
  ConnectionOptions options;
  options.idle_timeout = 0.02;
  Plain p(options);
  p.clock.set(p.clock.now() + 1);  // the deadline has passed when the timer fires
  p.run_until([&] { return p.owner.retired > 0; });
  CHECK(p.owner.retired == 1);
  CHECK(p.io->connection().closed());
}

TEST_CASE("socket I/O: a client that does not read gets write interest, then everything") {
  Plain p;
  int small = 4096;
  setsockopt(p.client, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  std::string batch;
  for (int i = 0; i < 2000; ++i) batch += kGet;
  size_t offset = 0;
  std::string got;
  size_t answers = 0;
  p.run_until([&] {
    if (offset < batch.size()) {
      ssize_t n = ::send(p.client, batch.data() + offset, batch.size() - offset, 0);
      if (n > 0) offset += n;
    }
    if (p.io->connection().writing() || offset == batch.size()) got += p.receive();
    size_t found = 0;
    for (size_t at = got.find("HTTP/1.1 "); at != std::string::npos; at = got.find("HTTP/1.1 ", at + 1)) ++found;
    answers = found;
    return answers == 2000;
  });
  CHECK(answers == 2000);
  CHECK_FALSE(p.io->connection().writing());
}
