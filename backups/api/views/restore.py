"""`/api/backup/<id>/contents`, `/api/backup/restore/targets` and `/api/backup/<id>/restore`."""

from __future__ import annotations

import re

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from backups.api.pagination import Pagination
from backups.api.serializers.restore import (
    ContentsSerializer,
    MembersPageSerializer,
    RestoreRequestSerializer,
    TargetsSerializer,
)
from backups.api.serializers.runs import ConflictSerializer, RunEnvelopeSerializer, RunSerializer
from backups.api.views.backups import _fresh_backup
from backups.audit import Actor
from backups.catalogue.paths import BackupNotFound, member_opener, open_member
from backups.errors import NotFound
from backups.restore import targets
from backups.restore.contents import archive_members, backup_contents
from backups.restore.services import RestoreRequest, contents_of, restore_request


class ContentsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("archive", str, description="list this archive's members (paginated)"),
            OpenApiParameter("page", int, description="with archive: the page, from 1"),
            OpenApiParameter("page_size", int, description=f"with archive: 1 to {Pagination.max_page_size}"),
        ],
        responses={
            200: PolymorphicProxySerializer(
                component_name="ContentsOrMembers",
                serializers=[ContentsSerializer, MembersPageSerializer],
                resource_type_field_name=None,
            ),
            404: OpenApiResponse(description="unknown backup or archive"),
        },
    )
    def get(self, request: Request, pk: str) -> Response:
        """What the backup holds: its database dumps (format and database read from their first bytes)
        and archives; `?archive=<path>` lists that archive's members by streaming it (never extracting),
        page by page."""
        backup = _fresh_backup(pk)
        archive_path = request.query_params.get("archive")
        if archive_path is None:
            for name in ("page", "page_size"):
                if name in request.query_params:
                    raise ValidationError({name: ["Only with archive."]})
            if not backup.local:
                return Response(contents_of(backup).to_document())
            listing = [(entry["path"], int(entry["size_bytes"])) for entry in backup.files or []]
            try:
                with member_opener(settings.BACKUP_ROOT, backup.id) as open_file:
                    contents = backup_contents(listing, open_file)
            except BackupNotFound:
                raise NotFound("Backup not found.") from None
            return Response(contents.to_document())
        if archive_path == "":
            raise ValidationError({"archive": ["Must not be empty."]})
        archive = contents_of(backup).archive(archive_path)
        if archive is None:
            raise NotFound("No such archive in this backup.")
        if not backup.local:
            raise NotFound("This backup's folder is gone: its archives cannot be read here.")
        page = _positive(request, "page", 1, 10**6)
        size = Pagination().get_page_size(request)
        try:
            with open_member(settings.BACKUP_ROOT, backup.id, archive.path) as member:
                listed = archive_members(member.file, archive.compression, (page - 1) * size, size)  # type: ignore[arg-type]
        except BackupNotFound:
            raise NotFound("No such archive in this backup.") from None
        url = request.build_absolute_uri()
        previous = None
        if page > 1:
            previous = (
                remove_query_param(url, "page") if page == 2 else replace_query_param(url, "page", page - 1)
            )
        return Response(
            {
                "archive": archive.path,
                "count": None if listed.has_more else listed.offset + len(listed.members),
                "next": replace_query_param(url, "page", page + 1) if listed.has_more else None,
                "previous": previous,
                "members": [member.to_document() for member in listed.members],
                "error": listed.error,
            }
        )


def _positive(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,7}", raw) or not 1 <= int(raw) <= maximum:
        raise ValidationError({name: [f"Must be an integer from 1 to {maximum}."]})
    return int(raw)


class RestoreTargetsView(APIView):
    @extend_schema(responses=TargetsSerializer)
    def get(self, request: Request) -> Response:
        """The places a restore may write, by name and kind (from RESTORE_TARGETS and
        RESTORE_DIRECTORIES). Never a URL, a path or a password."""
        return Response({"targets": [target.to_document() for target in targets.targets()]})


class RestoreView(APIView):
    @extend_schema(
        request=RestoreRequestSerializer,
        responses={
            202: RunEnvelopeSerializer,
            404: OpenApiResponse(description="unknown backup"),
            409: ConflictSerializer,
        },
    )
    def post(self, request: Request, pk: str) -> Response:
        """Restore a dump into a named database, or an archive into a new folder `<backup id>-<time>/` of
        a named restore directory: a run of kind `restore` in the one-at-a-time lane, with progress,
        cancellable. `dryRun` says what would happen and changes nothing. A database target that is not
        empty needs `confirm` equal to the backup id (409 otherwise)."""
        body = RestoreRequestSerializer(data=request.data if request.data is not None else {})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        backup = _fresh_backup(pk)
        run = restore_request(
            backup_id=backup.id,
            request=RestoreRequest(
                component=data["component"],
                target=data["target"],
                path=data.get("dump") or data.get("archive") or "",
                dry_run=data["dryRun"],
                confirm=data["confirm"],
                paths=list(data["paths"]),
            ),
            actor=Actor.from_request(request),
        )
        return Response({"run": RunSerializer(run).data}, status=status.HTTP_202_ACCEPTED)
