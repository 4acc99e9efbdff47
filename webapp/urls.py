"""URL configuration: pages, the REST API under /api/, the admin and the health check."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp.views import LoginView, healthz, only_with_mail

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(),
         name="password_change_done"),
    # Password reset by e-mail, only where EMAIL_HOST is set (a 404 otherwise: accounts are then reset by a team
    # admin, `manage.py nas user add`, or the admin).
    path("accounts/password_reset/", only_with_mail(auth_views.PasswordResetView.as_view()),
         name="password_reset"),
    path("accounts/password_reset/done/", only_with_mail(auth_views.PasswordResetDoneView.as_view()),
         name="password_reset_done"),
    path("accounts/reset/<uidb64>/<token>/", only_with_mail(auth_views.PasswordResetConfirmView.as_view()),
         name="password_reset_confirm"),
    path("accounts/reset/done/", only_with_mail(auth_views.PasswordResetCompleteView.as_view()),
         name="password_reset_complete"),
    path("healthz", healthz, name="healthz"),
    path("api/", include("webapp.api.urls")),
    path("", include("webapp.teams.urls")),
    path("", include("webapp.datasets.urls")),
    path("", include("webapp.experiments.urls")),
]
