"""Getting uploads decoded without starving the model: the bounded decode pool that runs
:mod:`models.imaging` (the one decode path of training, evaluation and serving) off the event loop.

May import ``models.imaging``, ``service.observability`` and the shared ``service.config``/``errors``; never
``service.api``, ``service.serving`` or FastAPI.
"""
