// The listening socket of one worker loop: --bind/--port parsed into an
// address, a probe that the port is free, then socket, bind and listen with
// SO_REUSEPORT (each loop has its own listener on the same port; the kernel
// spreads the connections).
#pragma once

#include "result.h"

#include <cstdint>
#include <string>

namespace kv {

// Opens a non-blocking listening socket on --bind/--port and returns it.
// `probe`: first check that nobody listens on the port (the first loop does).
Result<int> open_listener(const std::string& bind, uint16_t port, bool probe);

}  // namespace kv
