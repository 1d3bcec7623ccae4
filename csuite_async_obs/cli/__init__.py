"""The ``csuite-async-obs`` command: :mod:`.main` (click commands) and :mod:`.reference`
(the README's tables, generated from the catalog and the options)."""
