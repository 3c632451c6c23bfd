"""``forecaster run``: the supervisor and the processes it starts and watches.

- :mod:`~forecaster.daemon.supervisor`: starts, checks and restarts the children;
- :mod:`~forecaster.daemon.capture`, :mod:`~forecaster.daemon.capture_group`: a camera's
  capture loop, and the processes that run several, one thread each;
- :mod:`~forecaster.daemon.worker`: the inference worker, one process for all cameras;
- :mod:`~forecaster.daemon.prometheus`: the metrics over HTTP;
- :mod:`~forecaster.daemon.notify`: systemd notifications.
"""
