from __future__ import annotations

from rest_framework.permissions import BasePermission

from backups.auth import PlatformUser


class IsSuperAdmin(BasePermission):
    """A valid token carrying the SUPER_ADMIN role, or a Django superuser's admin session."""

    message = "The SUPER_ADMIN role is required."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if isinstance(user, PlatformUser):
            return user.is_super_admin
        return bool(user is not None and user.is_authenticated and user.is_superuser)
