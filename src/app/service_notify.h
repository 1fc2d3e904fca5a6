// systemd's readiness protocol (sd_notify(3)) without libsystemd: the unit is
// Type=notify, so `systemctl start` returns once the server listens.
#pragma once

#include <string_view>

namespace kv {

// Sends STATE (e.g. "READY=1") to $NOTIFY_SOCKET; does nothing when it is not
// set (not started by systemd). Failures are logged, never fatal: systemd then
// times the start out and says so.
void notify_service_manager(std::string_view state);

}  // namespace kv
