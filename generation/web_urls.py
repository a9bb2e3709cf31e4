"""Server-rendered pages (generate, task, gallery, image, my queue, my uploads, accounts, legacy)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from generation import account_views, upload_views, views

app_name = "web"
urlpatterns = [
    path("", views.generate, name="generate"),
    path("workflow/", views.run_workflow, name="run-workflow"),
    path("tasks/<uuid:task_id>/", views.task_detail, name="task"),
    path("tasks/<uuid:task_id>/cancel/", views.task_cancel, name="task-cancel"),
    path("queue/", views.my_queue, name="queue"),
    path("gallery/", views.gallery, name="gallery"),
    path("images/<uuid:image_id>/", views.image_detail, name="image"),
    path("images/<uuid:image_id>/download/", views.image_download, name="image-download"),
    path("images/<uuid:image_id>/delete/", views.image_delete, name="image-delete"),
    path("uploads/", upload_views.my_uploads, name="uploads"),
    path("uploads/<uuid:upload_id>/image/", upload_views.upload_image, name="upload-image"),
    path("uploads/<uuid:upload_id>/delete/", upload_views.upload_delete, name="upload-delete"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/tokens/", account_views.api_tokens, name="api-tokens"),
    path("accounts/tokens/<int:token_id>/revoke/", account_views.api_token_revoke, name="api-token-revoke"),
    path("legacy/", views.legacy, name="legacy"),
]
