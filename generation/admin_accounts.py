"""The users' admin: deleting accounts goes through generation.services.user_delete, so that an account's
tasks, images and files go with it. The confirmation page lists the tasks and images that will go, as
Django's cascade finds them."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from generation import services
from generation.models import Image, Task, TaskAttempt, WebhookDelivery

User = get_user_model()
# Rows the admin only shows (no delete permission) but that an account's deletion takes with it.
TAKEN_WITH_THE_ACCOUNT = {model._meta.verbose_name for model in (Task, TaskAttempt, Image, WebhookDelivery)}


class AccountAdmin(UserAdmin):
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms_needed - TAKEN_WITH_THE_ACCOUNT, protected

    def delete_model(self, request, obj) -> None:
        services.user_delete(user=obj)

    def delete_queryset(self, request, queryset) -> None:
        for user in queryset:
            services.user_delete(user=user)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AccountAdmin)
