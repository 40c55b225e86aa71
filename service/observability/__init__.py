"""What operators see: the Prometheus metrics of one app instance and the log redaction that keeps patient data
out of library log lines. Imports nothing else of the service.
"""
