"""Metric definitions and their exposition; knows nothing of Celery.

:mod:`.catalog` names every metric and label (pure data); :mod:`.task_metrics`
builds the task metrics on a registry it is given; :mod:`.const_labels` splits
the constant labels once for every collector; :mod:`.exposition` renders the
task metrics fast.
"""
