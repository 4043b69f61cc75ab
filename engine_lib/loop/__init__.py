"""The engine loop: host heartbeats, VM statuses, agent event streams, HA and fencing, balancing."""
