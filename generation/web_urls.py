"""Server-rendered pages (generate, task, gallery, image, my queue, accounts, legacy)."""

app_name = "web"
urlpatterns: list = []
