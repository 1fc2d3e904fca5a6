// The listening socket of one worker loop: --bind/--port parsed into an
// address, a probe that the port is free, then socket, bind and listen with
// SO_REUSEPORT (each loop has its own listener on the same port; the kernel
// spreads the connections).
#pragma once

#include "config.h"

#include <string>

namespace kv {

// Opens a non-blocking listening socket into `fd`. `probe`: first check that
// nobody listens on the port (the first loop does). Returns an error message
// for the operator, empty when fine (the start-up convention).
std::string open_listener(const Config& config, bool probe, int& fd);

}  // namespace kv
