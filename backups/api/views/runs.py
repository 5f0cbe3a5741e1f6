"""`/api/backup/create`, `/api/backup/runs`, `/api/backup/runs/<id>` and its cancel."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.pagination import Pagination
from backups.api.serializers.runs import (
    ConflictSerializer,
    CreateRunSerializer,
    RunEnvelopeSerializer,
    RunSerializer,
)
from backups.audit import Actor
from backups.runs import selectors
from backups.runs.models import Run
from backups.runs.services import run_enqueue, run_request_cancel
from backups.worker.lease import worker_last_seen_seconds


class RunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = RunSerializer
    pagination_class = Pagination
    queryset = Run.objects.none()  # the schema generator's model hint; get_queryset answers
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return selectors.list_runs()

    def get_object(self) -> Run:
        return selectors.get_run(self.kwargs["pk"])

    @extend_schema(request=None, responses={202: RunSerializer, 409: ConflictSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        run = run_request_cancel(run=self.get_object(), actor=Actor.from_request(request))
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class CreateBackupView(APIView):
    @extend_schema(
        request=CreateRunSerializer, responses={202: RunEnvelopeSerializer, 409: ConflictSerializer}
    )
    def post(self, request: Request) -> Response:
        body = request.data if request.data is not None else {}
        if not isinstance(body, dict):
            raise ParseError("The body must be a JSON object.")
        serializer = CreateRunSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        description = serializer.validated_data["description"]
        run = run_enqueue(actor=Actor.from_request(request), description=description)
        answer: dict[str, object] = {"run": RunSerializer(run).data}
        seen = worker_last_seen_seconds()
        if seen is None or seen > settings.WORKER_STALE_SECONDS:
            # Still queued (a worker may be starting), but nobody should wait for "within a second".
            when = "ever" if seen is None else f"for {int(seen)} s"
            answer["warnings"] = [f"No worker has been seen {when}; the run starts when one is running."]
        return Response(answer, status=status.HTTP_202_ACCEPTED)
