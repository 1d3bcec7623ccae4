"""Rules and dashboards generated from one config, exported by ``csuite-async-obs monitoring``,
and the ``doctor`` that checks a live deployment."""
