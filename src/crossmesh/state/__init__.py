"""The state directory: allocations, WireGuard keys, the last applied plan. The only writer of secrets."""
