"""URL configuration: pages, the REST API under /api/, the admin and the health check."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    # No e-mail password reset: accounts are made by a team admin (`manage.py nas user add`, or the admin).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(),
         name="password_change_done"),
    path("healthz", healthz, name="healthz"),
    path("api/", include("webapp.api.urls")),
    path("", include("webapp.teams.urls")),
    path("", include("webapp.datasets.urls")),
    path("", include("webapp.experiments.urls")),
]
