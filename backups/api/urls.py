from django.urls import re_path

from backups.api.views import backups, config, logs, notifications, restore, retention, runs, script, status

backup_list = backups.BackupViewSet.as_view({"get": "list"})
backup_detail = backups.BackupViewSet.as_view({"get": "retrieve", "delete": "destroy"})
# Manual mapping skips the router, so an @action's own options (the download's signed-link
# authentication) are passed here.
backup_download = backups.BackupViewSet.as_view({"get": "download"}, **backups.BackupViewSet.download.kwargs)
backup_download_link = backups.BackupViewSet.as_view({"post": "download_link"})
backup_verify = backups.BackupViewSet.as_view({"post": "verify"})
backup_offsite = backups.BackupViewSet.as_view({"post": "offsite"})
backup_pin = backups.BackupViewSet.as_view({"post": "pin"})
backup_unpin = backups.BackupViewSet.as_view({"post": "unpin"})
run_list = runs.RunViewSet.as_view({"get": "list"})
run_detail = runs.RunViewSet.as_view({"get": "retrieve"})
run_cancel = runs.RunViewSet.as_view({"post": "cancel"})

# The original service's paths, without trailing slashes (one is tolerated). The fixed names come
# first: a backup id never shadows them.
urlpatterns = [
    re_path(r"^status/?$", status.StatusView.as_view(), name="backup-status"),
    re_path(r"^list/?$", backup_list, name="backup-list"),
    re_path(r"^create/?$", runs.CreateBackupView.as_view(), name="backup-create"),
    re_path(r"^logs/?$", logs.LogsView.as_view(), name="backup-logs"),
    re_path(r"^config/?$", config.ConfigView.as_view(), name="backup-config"),
    re_path(r"^test-script/?$", script.TestScriptView.as_view(), name="backup-test-script"),
    re_path(
        r"^notifications/deliveries/?$",
        notifications.DeliveryListView.as_view(),
        name="notification-deliveries",
    ),
    re_path(
        r"^notifications/test/?$", notifications.NotificationTestView.as_view(), name="notification-test"
    ),
    re_path(r"^retention/preview/?$", retention.RetentionPreviewView.as_view(), name="retention-preview"),
    re_path(r"^retention/apply/?$", retention.RetentionApplyView.as_view(), name="retention-apply"),
    re_path(r"^restore/targets/?$", restore.RestoreTargetsView.as_view(), name="restore-targets"),
    re_path(r"^runs/?$", run_list, name="run-list"),
    re_path(r"^runs/(?P<pk>[^/]+)/?$", run_detail, name="run-detail"),
    re_path(r"^runs/(?P<pk>[^/]+)/cancel/?$", run_cancel, name="run-cancel"),
    re_path(r"^(?P<pk>[^/]+)/download/?$", backup_download, name="backup-download"),
    re_path(r"^(?P<pk>[^/]+)/download-link/?$", backup_download_link, name="backup-download-link"),
    re_path(r"^(?P<pk>[^/]+)/verify/?$", backup_verify, name="backup-verify"),
    re_path(r"^(?P<pk>[^/]+)/offsite/?$", backup_offsite, name="backup-offsite"),
    re_path(r"^(?P<pk>[^/]+)/contents/?$", restore.ContentsView.as_view(), name="backup-contents"),
    re_path(r"^(?P<pk>[^/]+)/restore/?$", restore.RestoreView.as_view(), name="backup-restore"),
    re_path(r"^(?P<pk>[^/]+)/pin/?$", backup_pin, name="backup-pin"),
    re_path(r"^(?P<pk>[^/]+)/unpin/?$", backup_unpin, name="backup-unpin"),
    re_path(r"^(?P<pk>[^/]+)/?$", backup_detail, name="backup-detail"),
]
