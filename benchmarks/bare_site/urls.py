from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class BareDRFView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def bare_django(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("drf", BareDRFView.as_view()),
    path("django", bare_django),
]
