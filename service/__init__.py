"""The running system: the ``glimpse`` CLI, settings, worker, web app.

May import ``streaming`` and ``models``.
"""
