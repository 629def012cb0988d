"""The web inbox (DESIGN §13): pages and a JSON API served by the daemon's own loop.

Pages read through a read-only connection of their own, so they never wait for the
writer; every change goes through `gateway.actions` with the signed-in agent as actor
(`via = "web"`). `server` starts and stops it, `access` signs people in and guards
every request, `pages` answers them, `live` tells open pages that the data changed.
"""
