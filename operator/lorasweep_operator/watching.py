"""How the operator's watches of sweeps and Jobs recover (`--watch-*` flags, the chart's operator.watch.*).

Its own module so that the command line reads the defaults without importing kopf and the handlers.
"""

# The API server sends a bookmark on every watch about once a minute, so a stream quiet for longer is dead (a
# proxy or load balancer that dropped it without closing it): it is opened again from the last resourceVersion.
DEFAULT_WATCH_INACTIVITY_TIMEOUT = 70.0
# Each watch request asks the API server to end it after this long, and is then opened again: a second net under
# connections that die silently, and a bound on how long one stream lives.
DEFAULT_WATCH_SERVER_TIMEOUT = 600
