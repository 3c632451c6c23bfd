"""forecaster: a streaming video frame forecaster daemon.

Capture processes read frames into shared-memory rings; one inference worker runs a
stateful ConvLSTM step per frame and publishes predictions and anomaly scores over ZeroMQ.
"""

__version__ = "0.1.0"
