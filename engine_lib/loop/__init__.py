"""The engine loop (``kestrel engine run``): monitoring, event following, HA, fencing,
balancing, and the one VM status rule the poll and the event paths share (vm_status)."""
