"""The subscriber side: ``forecaster relay`` and ``forecaster watch``.

- :mod:`~forecaster.relay.forwarder`: one feed for many daemons (XSUB/XPUB proxy);
- :mod:`~forecaster.relay.health`: what the relay knows of its upstreams, and its metrics;
- :mod:`~forecaster.relay.watch`: subscribe to scores, events and status and show them.
"""
