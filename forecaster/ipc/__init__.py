"""What the daemon's processes share, and how they talk to each other and to subscribers.

- :mod:`~forecaster.ipc.ring`: a camera's shared-memory ring of its last frames;
- :mod:`~forecaster.ipc.health`: counters and heartbeats shared with the supervisor;
- :mod:`~forecaster.ipc.channels`: kill-safe flags, inboxes and outboxes between processes;
- :mod:`~forecaster.ipc.publisher`: the ZeroMQ PUB socket that never blocks its caller;
- :mod:`~forecaster.ipc.feed`: the worker's private feed for the daemon's own readers.

The daemon, the live page, the MQTT bridge, the relay and replay all use these; none of them is here.
"""
