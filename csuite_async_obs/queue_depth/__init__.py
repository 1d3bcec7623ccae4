"""Queue depth: the exact backlog of each queue, polled off the scrape path.

The parts, each replaceable on its own:

* :mod:`.selection` -- which queues: the app's, the worker's, named and glob ones;
* :mod:`.reading` -- :class:`~.reading.Reading` and the small
  :class:`~.reading.BrokerReader` interface every broker's reader implements;
* one module per broker: :mod:`.redis_reader` (one Lua script a poll),
  :mod:`.declare_reader` (a passive ``queue_declare`` per queue: AMQP and any
  other kombu transport);
* :mod:`.readers` -- :func:`~.readers.open_reader` picks and connects one for
  the app's broker: a new broker is a new module and one line there;
* :mod:`.poller` -- polls on daemon threads, keeps the last state in memory;
* :mod:`.collector` -- turns the last state into metric families at scrape time;
* :mod:`.standalone` -- the ``csuite-async-obs exporter`` program.

Nothing on the poll threads touches a prometheus_client metric, and a scrape
never waits on the broker.
"""
