"""`/api/backup/config`: GET the document, PUT a whole one, PATCH a part."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.serializers.config import ConfigDocumentSerializer
from backups.audit import Actor
from backups.config.selectors import config_public
from backups.config.services import config_update
from backups.config.warnings import config_warnings

# PATCH takes any subset of the document, nested keys included.
PatchedConfigDocument = ConfigDocumentSerializer(partial=True)


class ConfigView(APIView):
    @extend_schema(responses=ConfigDocumentSerializer)
    def get(self, request: Request) -> Response:
        return Response(config_public())

    @extend_schema(request=ConfigDocumentSerializer, responses=ConfigDocumentSerializer)
    def put(self, request: Request) -> Response:
        return self._save(request, partial=False)

    @extend_schema(request=PatchedConfigDocument, responses=ConfigDocumentSerializer)
    def patch(self, request: Request) -> Response:
        return self._save(request, partial=True)

    def _save(self, request: Request, *, partial: bool) -> Response:
        body = request.data
        if isinstance(body, dict) and "warnings" in body:
            # The answer's own read-only key: a client that sends back what it was given is not refused.
            body = {key: value for key, value in body.items() if key != "warnings"}
        document = config_update(document=body, actor=Actor.from_request(request), partial=partial)
        warnings = config_warnings(document)
        public = config_public(document)
        return Response({**public, "warnings": warnings} if warnings else public)
