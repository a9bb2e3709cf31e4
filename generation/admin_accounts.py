"""The users' admin: deleting accounts goes through generation.services.user_delete, so that an account's
tasks, images and files go with it. The confirmation page lists the tasks and images that will go, as
Django's cascade finds them."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from generation import services
from generation.models import Image, InputImage, Task, TaskAttempt, UserShare, WebhookDelivery

User = get_user_model()
# Rows the admin only shows (no delete permission) but that an account's deletion takes with it.
TAKEN_WITH_THE_ACCOUNT = {
    model._meta.verbose_name for model in (Task, TaskAttempt, Image, InputImage, WebhookDelivery, UserShare)
}


class AccountAdmin(UserAdmin):
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms_needed - TAKEN_WITH_THE_ACCOUNT, protected

    def delete_model(self, request, obj) -> None:
        services.user_delete(user=obj)

    def delete_queryset(self, request, queryset) -> None:
        for user in queryset:
            services.user_delete(user=user)


@admin.register(UserShare)
class UserShareAdmin(admin.ModelAdmin):
    """Fair-share weights. The usage is the completions' to write: a save changes the weight only."""

    list_display = ["user", "weight", "usage_seconds", "usage_at"]
    search_fields = ["user__username"]
    autocomplete_fields = ["user"]
    readonly_fields = ["usage_seconds", "usage_at"]

    def get_readonly_fields(self, request, obj=None):
        return ["user", *self.readonly_fields] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change) -> None:
        if change:
            UserShare.objects.filter(pk=obj.pk).update(weight=obj.weight)
        else:
            super().save_model(request, obj, form, change)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AccountAdmin)
