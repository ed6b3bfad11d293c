"""RFC 3461/3464 DSNs: parameters, the reports relayd builds, the ones it reads; pure."""
