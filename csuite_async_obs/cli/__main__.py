"""``python -m csuite_async_obs.cli``."""

from .main import main

main()
