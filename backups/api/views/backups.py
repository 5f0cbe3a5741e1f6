"""`/api/backup/list`, `/api/backup/<id>` (GET, DELETE), `/api/backup/<id>/download` and the
browser helpers around them. `latest` is an alias of the newest completed backup wherever a GET takes
an id."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from backups.api.downloads import download_file, download_tar
from backups.api.downloads_remote import download_remote
from backups.api.pagination import Pagination, choice_param
from backups.api.serializers.backups import (
    BackupListSerializer,
    BackupSerializer,
    DownloadLinkSerializer,
    VerifyRequestSerializer,
)
from backups.api.serializers.runs import ConflictSerializer, RunEnvelopeSerializer, RunSerializer
from backups.audit import Actor
from backups.auth import PlatformJWTAuthentication, SuperuserSessionAuthentication
from backups.catalogue import selectors, sync
from backups.catalogue.models import Backup, BackupStatus
from backups.catalogue.services import backup_delete, backup_set_pinned
from backups.download_links import SignedLinkAuthentication, signed_download_url
from backups.offsite.services import offsite_request
from backups.verification.services import verification_request


class BackupViewSet(viewsets.GenericViewSet):
    """The catalogue: folders directly inside BACKUP_ROOT."""

    serializer_class = BackupSerializer
    pagination_class = Pagination
    lookup_value_regex = "[^/]+"
    queryset = Backup.objects.all()

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=BackupStatus.values),
            OpenApiParameter("ordering", str, enum=list(selectors.ORDERINGS)),
        ],
        responses=BackupListSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        sync.ensure_fresh()
        queryset = selectors.list_backups(
            status=choice_param(request, "status", BackupStatus.values),
            ordering=choice_param(request, "ordering", selectors.ORDERINGS) or "-created_at",
        )
        page = self.paginate_queryset(queryset.values(*BackupListSerializer.ROW_FIELDS))
        zone = timezone.get_current_timezone()
        return self.get_paginated_response([BackupListSerializer.row(values, zone) for values in page])

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(BackupSerializer(_fresh_backup(pk)).data)

    @extend_schema(
        responses={
            204: None,
            404: OpenApiResponse(description="unknown"),
            409: OpenApiResponse(description="running or pinned"),
        }
    )
    def destroy(self, request: Request, pk: str) -> Response:
        sync.ensure_fresh()
        backup_delete(backup_id=pk, actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[OpenApiParameter("file", str, description="relative path of one file in the backup")],
        responses={
            (200, "application/x-tar"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="unknown backup or file"),
            416: OpenApiResponse(description="range not satisfiable"),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        authentication_classes=[
            PlatformJWTAuthentication,
            SuperuserSessionAuthentication,
            SignedLinkAuthentication,
        ],
    )
    def download(self, request: Request, pk: str) -> HttpResponse:
        backup = _fresh_backup(pk)
        rel_path = request.query_params.get("file")
        if not backup.local:
            return download_remote(request, backup, rel_path)
        if rel_path is not None:
            return download_file(request, backup, rel_path)
        return download_tar(request, backup)

    @extend_schema(
        request=VerifyRequestSerializer, responses={202: RunEnvelopeSerializer, 409: ConflictSerializer}
    )
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str) -> Response:
        """Check the backup now: `quick` reads every file against its manifest, `deep` also reads every
        archive to its end, checks every dump and restores each into a scratch database when
        RESTORE_TEST_DATABASE_URL is set. A run of kind `verify`, in the one-at-a-time lane."""
        body = VerifyRequestSerializer(data=request.data if request.data is not None else {})
        body.is_valid(raise_exception=True)
        backup = _fresh_backup(pk)
        run = verification_request(
            backup_id=backup.id, level=body.validated_data["level"], actor=Actor.from_request(request)
        )
        return Response({"run": RunSerializer(run).data}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: RunEnvelopeSerializer, 409: ConflictSerializer})
    @action(detail=True, methods=["post"])
    def offsite(self, request: Request, pk: str) -> Response:
        """Copy the backup to the off-site store now: a run of kind `offsite` in the one-at-a-time lane
        (a backup request waits for it). Files the store already holds are not sent again; an upload
        that was interrupted continues from the parts already sent."""
        backup = _fresh_backup(pk)
        run = offsite_request(backup_id=backup.id, actor=Actor.from_request(request))
        return Response({"run": RunSerializer(run).data}, status=status.HTTP_202_ACCEPTED)

    # Outside the contract (so outside the OpenAPI document, whose paths are exactly the contract's):
    # what the admin's and the dashboard's buttons call.

    @extend_schema(exclude=True)
    @action(detail=True, methods=["post"], url_path="download-link")
    def download_link(self, request: Request, pk: str) -> Response:
        """A link that downloads this backup (or `?file=`) without a header, for a browser; it expires
        after DOWNLOAD_LINK_TTL seconds and opens nothing else."""
        backup = _fresh_backup(pk)
        url = signed_download_url(backup.id, request.user, request.query_params.get("file") or None)
        return Response(DownloadLinkSerializer({"url": url, "expires_in": settings.DOWNLOAD_LINK_TTL}).data)

    @extend_schema(exclude=True)
    @action(detail=True, methods=["post"])
    def pin(self, request: Request, pk: str) -> Response:
        """Protect a backup from delete and retention."""
        return self._set_pinned(request, pk, pinned=True)

    @extend_schema(exclude=True)
    @action(detail=True, methods=["post"])
    def unpin(self, request: Request, pk: str) -> Response:
        return self._set_pinned(request, pk, pinned=False)

    def _set_pinned(self, request: Request, pk: str, *, pinned: bool) -> Response:
        backup = backup_set_pinned(
            backup_id=_fresh_backup(pk).id, pinned=pinned, actor=Actor.from_request(request)
        )
        return Response(BackupSerializer(backup).data)


def _fresh_backup(backup_id: str) -> Backup:
    sync.ensure_fresh(backup_id)
    return selectors.get_backup(backup_id)
