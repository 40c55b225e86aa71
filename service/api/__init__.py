"""The HTTP layer: routes, request dependencies, error handlers, the request middleware and upload reading.

Owns everything FastAPI/Starlette. Routes parse a request, call the layer below and shape the answer; they
never touch tensors. May import ``service.serving``, ``service.ingest``, ``service.dicomweb``,
``service.evaluation``, ``service.db``, ``service.observability`` and the shared ``service.config``/``errors``/``schemas``.
Nothing else in the service imports it (only ``service.app``, which assembles the application).
"""
