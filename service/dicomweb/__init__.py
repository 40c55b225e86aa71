"""DICOM in and out: STOW-RS multipart parsing and responses, the store transaction (each instance assessed like
/assess), the result instances (Secondary Capture + SR) and pushing them to a DICOMweb server.

May import ``service.serving`` (the assessor), ``models.imaging``, ``service.observability`` and the shared
``service.config``/``errors``/``schemas``; never ``service.api`` or FastAPI.
"""
