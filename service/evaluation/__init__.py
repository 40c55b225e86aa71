"""The offline Pointing Game job: the command line (``python -m service.evaluate``), the SQLite job store and
the low-priority child-process runner of the server, and the HTML report.

The numbers come from :mod:`models.evaluation`; this package adds jobs, resumption, sharding and reports. May
import ``models`` and the shared ``service.config``/``errors``; never ``service.api``, ``service.serving`` or
FastAPI.
"""
