"""Event recordings: a clip, a snapshot and a sidecar per anomaly event.

- :mod:`~forecaster.recording.recorder`: the pre-roll buffer and the recorder a capture
  thread or a replay feeds;
- :mod:`~forecaster.recording.clip_writer`: the thread that writes the files;
- :mod:`~forecaster.recording.h264`: the clip's video file (H.264 in MP4, index first);
- :mod:`~forecaster.recording.retention`: maximum age, total size and free space;
- :mod:`~forecaster.recording.event_index`: the events in SQLite beside the files, and
  the reconcile at start;
- :mod:`~forecaster.recording.recording_dir`: where the folder is, and whether it is usable;
- :mod:`~forecaster.recording.event_board`: each camera's current event, from the worker to
  its capture.
"""
