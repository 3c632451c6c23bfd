"""The offline commands: ``replay``, ``eval`` and ``train`` over footage on disk.

- :mod:`~forecaster.offline.replay`: recorded footage through the live pipeline's code;
- :mod:`~forecaster.offline.replay_inputs`, :mod:`~forecaster.offline.replay_feed`,
  :mod:`~forecaster.offline.replay_results`: what a replay reads, how it feeds the engine,
  what it produced per video;
- :mod:`~forecaster.offline.train`: a model trained on normal footage, then calibrated;
- :mod:`~forecaster.offline.evaluate`: frame-level detection quality on a labelled data set;
- :mod:`~forecaster.offline.datasets`: which videos a path names, their frames and labels;
- :mod:`~forecaster.offline.detection_metrics`, :mod:`~forecaster.offline.report`,
  :mod:`~forecaster.offline.preview`, :mod:`~forecaster.offline.scores_csv`: metrics, plots,
  MP4 previews and the scores file;
- :mod:`~forecaster.offline.outputs`: the output folders;
- :mod:`~forecaster.offline.pseudo_anomaly`: moving objects pasted into normal footage.

The daemon imports nothing from here.
"""
