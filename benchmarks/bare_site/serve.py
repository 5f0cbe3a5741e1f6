"""`python benchmarks/bare_site/serve.py PORT`: the bare site on the service's uvicorn configuration
(the same guarded h11 protocol and limits as `manage.py serve`)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # bare_site, and the project's `backups`
os.environ["DJANGO_SETTINGS_MODULE"] = "bare_site.settings"

import uvicorn  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from backups.server import uvicorn_config  # noqa: E402

if __name__ == "__main__":
    application = get_asgi_application()
    uvicorn.Server(uvicorn_config(application, host="127.0.0.1", port=int(sys.argv[1]))).run()
