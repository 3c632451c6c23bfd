"""From frames to anomaly scores and events, with no processes: what live and offline share.

- :mod:`~forecaster.detection.engine`: prediction, scoring and recovery for many cameras;
- :mod:`~forecaster.detection.scorer`: prediction error, calibrated score, hysteresis events;
- :mod:`~forecaster.detection.calibration`: per-location calibration ("patch" mode);
- :mod:`~forecaster.detection.fused`: the error fused with a motion cue ("fused" mode);
- :mod:`~forecaster.detection.flow`: the motion cue, dense optical flow;
- :mod:`~forecaster.detection.fit`: does the model fit the camera.
"""
