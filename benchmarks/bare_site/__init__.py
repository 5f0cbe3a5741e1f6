"""The smallest Django + DRF site, served by the service's own uvicorn configuration: the floor that
`bench_request.py` measures the service's request path against."""
