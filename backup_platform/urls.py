from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from backups.api.views.metrics import metrics_view
from backups.api.views.status import health
from backups.dashboard import dashboard

urlpatterns = [
    path("", RedirectView.as_view(url="/dashboard/", permanent=False)),
    path("health", health, name="health"),
    path("health/", health),
    path("metrics", metrics_view, name="metrics"),
    path("api/backup/", include("backups.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("dashboard/", dashboard, name="dashboard"),
    path("admin/", admin.site.urls),
    # The admin's and the API docs' CSS/JS when `serve` faces the browser itself (make run, tests);
    # behind nginx, /static/ is answered from collectstatic's output before it gets here.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]

handler400 = "backups.api.errors.bad_request"
handler403 = "backups.api.errors.permission_denied"
handler404 = "backups.api.errors.not_found"
handler500 = "backups.api.errors.server_error"
