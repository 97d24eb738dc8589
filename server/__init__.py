"""The Notification Server: every definition and result, run sequencing, the admin API.

``store`` holds all its SQL behind a narrow interface; ``core`` is the server (runs,
dispatch, roll-up, time limits); ``admin_api`` answers admin requests.
"""
