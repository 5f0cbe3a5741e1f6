"""`/api/backup/status` and `/health`."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.serializers.status import StatusSerializer
from backups.catalogue import sync
from backups.status import documents


class StatusView(APIView):
    @extend_schema(responses=StatusSerializer)
    def get(self, request: Request) -> Response:
        sync.ensure_fresh()
        return Response(StatusSerializer(documents.status()).data)


def health(request: Any) -> JsonResponse:
    """No authentication, no paths: what a load balancer or a monitor asks."""
    document, code = documents.health()
    return JsonResponse(document, status=code)
