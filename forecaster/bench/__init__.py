"""``forecaster bench``: timings of the parts and of the whole daemon, on this machine.

- :mod:`forecaster.bench.suite`: the command, its phases and its JSON report;
- :mod:`forecaster.bench.scoring`, :mod:`~forecaster.bench.replay`,
  :mod:`~forecaster.bench.runtimes`, :mod:`~forecaster.bench.recording`: one phase each;
- :mod:`forecaster.bench.daemon` and :mod:`~forecaster.bench.web`: a real daemon under load;
- :mod:`forecaster.bench.daemon_process`: starts and stops a ``forecaster run`` child.

Nothing here is imported by the daemon itself.
"""
