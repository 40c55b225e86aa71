"""The store: one SQL database (SQLite in NORMGATE_STATE_DIR by default, PostgreSQL for several replicas) holding
the audit trail of every decision, the radiographers' verdicts and the result instances WADO-RS serves.

SQLAlchemy Core tables (``schema``), Alembic migrations run at start-up or by ``python -m service.db upgrade``
(``migrate``), the write-behind audit writer with its spool file (``audit``), the queries behind ``/audit`` and the
verdicts (``queries``). May import ``service.serving.decisions`` (the records it stores), ``service.observability``
and the shared ``service.config``/``errors``; never ``service.api``, ``service.dicomweb`` or FastAPI.
"""
