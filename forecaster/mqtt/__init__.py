"""The MQTT bridge of ``forecaster run`` (``[mqtt]``): its own process (``fc-mqtt``).

- :mod:`forecaster.mqtt.bridge`: what is published, from the worker's messages: states,
  scores, events, snapshots and Home Assistant's discovery configs (no network here);
- :mod:`forecaster.mqtt.process`: the child process the supervisor starts and restarts,
  with the MQTT client (paho-mqtt), its reconnects and its bounded queue.
"""
