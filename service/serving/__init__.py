"""Models behind the API: checkpoint discovery, one worker thread per model, the dynamic batching queue, and
the assessment pipeline of one image (decode → queue → batch → decision).

May import ``models`` (the ML library), ``service.ingest``, ``service.observability`` and the shared
``service.config``/``errors``/``schemas``; never ``service.api`` or FastAPI.
"""
