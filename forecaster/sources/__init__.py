"""Where frames come from, and the first steps they take.

- :mod:`~forecaster.sources.readers`: cameras, network streams, video files, image folders
  and the synthetic scene behind one interface; ``open_source`` picks one from a string;
- :mod:`~forecaster.sources.synthetic`: the built-in moving scene with labelled anomalies;
- :mod:`~forecaster.sources.preprocess`: grey, resized, unit-range frames;
- :mod:`~forecaster.sources.read_ahead`: an iterator drained by a thread into a queue;
- :mod:`~forecaster.sources.pacing`: at most so many frames a second (capture, replay);
- :mod:`~forecaster.sources.frame_size`: the frame sizes the models take;
- :mod:`~forecaster.sources.files`: paths that exist but are not files to read.

Importing this package loads no OpenCV; the modules that need it import it.
"""
