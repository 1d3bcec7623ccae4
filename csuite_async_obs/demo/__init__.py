"""``csuite-async-obs demo``: :mod:`.runner` (the processes it starts and stops) and
:mod:`.tasks` (the sample tasks it sends)."""
