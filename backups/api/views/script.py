"""`/api/backup/test-script`: checks the script and the places it writes, without starting a backup."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.serializers.script import TestScriptSerializer
from backups.audit import Actor
from backups.status.script import script_test


class TestScriptView(APIView):
    @extend_schema(request=None, responses=TestScriptSerializer)
    def post(self, request: Request) -> Response:
        return Response(script_test(actor=Actor.from_request(request)))
