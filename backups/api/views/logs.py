"""`/api/backup/logs`: the script's log, the service's, the audit trail, or one run's output."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.serializers.logs import LogsQuerySerializer, LogsSerializer
from backups.runs.selectors import get_run
from backups.status.logs import log_entries


class LogsView(APIView):
    @extend_schema(parameters=[LogsQuerySerializer], responses=LogsSerializer)
    def get(self, request: Request) -> Response:
        query = LogsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        source, lines = query.validated_data["source"], query.validated_data["lines"]
        run = get_run(query.validated_data["run"], with_output=True) if source == "run" else None
        return Response({"source": source, "entries": log_entries(source, lines, run)})
