from django.urls import path

from webapp.teams import views

urlpatterns = [
    path("teams/", views.team_list, name="team_list"),
    path("teams/<int:pk>/webhook/", views.team_webhook, name="team_webhook"),
]
