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

# PATCH takes any subset of the document, nested keys included.
PatchedConfigDocument = ConfigDocumentSerializer(partial=True)


class ConfigView(APIView):
    @extend_schema(responses=ConfigDocumentSerializer)
    def get(self, request: Request) -> Response:
        return Response(config_public())

    @extend_schema(request=ConfigDocumentSerializer, responses=ConfigDocumentSerializer)
    def put(self, request: Request) -> Response:
        stored = config_update(document=request.data, actor=Actor.from_request(request), partial=False)
        return Response(config_public(stored))

    @extend_schema(request=PatchedConfigDocument, responses=ConfigDocumentSerializer)
    def patch(self, request: Request) -> Response:
        stored = config_update(document=request.data, actor=Actor.from_request(request), partial=True)
        return Response(config_public(stored))
