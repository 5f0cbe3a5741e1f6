"""`/api/backup/retention/preview` (GET: the current policy; POST: a candidate) and
`/api/backup/retention/apply`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.serializers.retention import (
    RetentionApplySerializer,
    RetentionCandidateSerializer,
    RetentionPreviewSerializer,
)
from backups.api.views.body import object_body
from backups.audit import Actor
from backups.retention.services import retention_apply, retention_preview


class RetentionPreviewView(APIView):
    @extend_schema(responses=RetentionPreviewSerializer)
    def get(self, request: Request) -> Response:
        return Response(retention_preview())

    @extend_schema(request=RetentionCandidateSerializer, responses=RetentionPreviewSerializer)
    def post(self, request: Request) -> Response:
        body = object_body(request, allowed=("retention",), required=("retention",))
        return Response(retention_preview(candidate=body["retention"]))


class RetentionApplyView(APIView):
    @extend_schema(request=None, responses=RetentionApplySerializer)
    def post(self, request: Request) -> Response:
        object_body(request, allowed=())
        deleted = retention_apply(actor=Actor.from_request(request), trigger="applied by hand")
        return Response({"deleted": [{"id": backup_id, "reason": reason} for backup_id, reason in deleted]})
