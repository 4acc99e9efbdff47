"""The team page: members, this month's compute against the quota, the review threshold and the webhook."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webapp.teams import selectors, services
from webapp.teams.models import Team


class WebhookForm(forms.Form):
    webhook_url = forms.URLField(required=False, assume_scheme="https", label="Webhook URL",
                                 help_text="JSON POST on finished, failed, approved and rejected experiments")


def team_list(request: HttpRequest) -> HttpResponse:
    teams = [{"team": t, "role": selectors.role_in(request.user, t.pk), "used": services.team_usage(t),
              "members": selectors.team_memberships(t), "webhook_form": WebhookForm(initial={
                  "webhook_url": t.webhook_url})} for t in selectors.user_teams(request.user)]
    return render(request, "teams/list.html", {"teams": teams})


@require_POST
def team_webhook(request: HttpRequest, pk: int) -> HttpResponse:
    team = selectors.user_teams(request.user).filter(pk=pk).first()
    if team is None:
        raise Http404("no such team")
    form = WebhookForm(request.POST)
    if not (request.user.is_staff or selectors.is_team_admin(request.user, team.pk)):
        messages.error(request, "Not allowed: only the team's admins or staff may set its webhook.")
    elif not form.is_valid():
        messages.error(request, f"Webhook not saved: {' '.join(form.errors['webhook_url'])}")
    else:
        Team.objects.filter(pk=team.pk).update(webhook_url=form.cleaned_data["webhook_url"])
        messages.success(request, f"Webhook of {team.name} saved.")
    return redirect("team_list")
