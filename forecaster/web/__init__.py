"""The live page of ``forecaster run``: its own process (``fc-web``), an aiohttp server.

- :mod:`forecaster.web.live`: what the page shows, gathered from the worker's messages
  and the cameras' frame rings; images rendered and encoded here, never in the worker;
- :mod:`forecaster.web.server`: the HTTP routes, the access rules and the WebSocket feed;
- :mod:`forecaster.web.process`: the child process the supervisor starts and restarts;
- ``static/``: the page, its script and style, shipped in the package (nothing is fetched
  from elsewhere).
"""
