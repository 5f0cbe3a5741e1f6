"""`/api/backup/notifications/deliveries` and `/api/backup/notifications/test`."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.api.pagination import Pagination, choice_param
from backups.api.serializers.notifications import DeliverySerializer, TestResultsSerializer
from backups.api.views.body import object_body
from backups.audit import Actor
from backups.notifications import channels, selectors
from backups.notifications.models import Delivery, DeliveryStatus
from backups.notifications.services import notifications_test


@extend_schema(
    parameters=[
        OpenApiParameter("status", str, enum=DeliveryStatus.values),
        OpenApiParameter("channel", str, enum=list(channels.CHANNELS)),
        OpenApiParameter("page_size", int, description="1-500, default 50"),
    ]
)
class DeliveryListView(ListAPIView):
    """Every delivery of every notification, newest first, with its attempts and last outcome."""

    serializer_class = DeliverySerializer
    pagination_class = Pagination
    queryset = Delivery.objects.none()  # the schema generator's model hint; get_queryset answers

    def get_queryset(self):
        return selectors.list_deliveries(
            status=choice_param(self.request, "status", DeliveryStatus.values),
            channel=choice_param(self.request, "channel", channels.CHANNELS),
        )


class NotificationTestView(APIView):
    @extend_schema(request=None, responses=TestResultsSerializer)
    def post(self, request: Request) -> Response:
        object_body(request, allowed=())
        return Response({"results": notifications_test(actor=Actor.from_request(request))})
