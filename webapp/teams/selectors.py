"""Who belongs where: the one place team membership and roles are read for every access rule."""
from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.utils import timezone

from webapp.teams.models import Membership, Team

User = AbstractBaseUser | AnonymousUser


def user_teams(user: User) -> QuerySet[Team]:
    """The teams whose objects the user sees: their own; every team for staff; none when anonymous."""
    if not user.is_authenticated:
        return Team.objects.none()
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user)


def member_teams(user: User) -> QuerySet[Team]:
    """The teams the user may submit to (staff too submit only where they are members), last used first."""
    if not user.is_authenticated:
        return Team.objects.none()
    last_used = Membership.objects.filter(team=OuterRef("pk"), user=user).values("last_used_at")[:1]
    return (Team.objects.filter(memberships__user=user).annotate(last_used=Subquery(last_used))
            .order_by(F("last_used").desc(nulls_last=True), "name"))


def visible_team_ids(user: User) -> QuerySet | None:
    """Team ids to filter an object list by; None means no filter (staff)."""
    if user.is_authenticated and user.is_staff:
        return None
    return user_teams(user).values("pk")


def role_in(user: User, team_id: int) -> str | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team_id=team_id).values_list("role", flat=True).first()


def is_team_admin(user: User, team_id: int) -> bool:
    return role_in(user, team_id) == Membership.Role.ADMIN


def default_team(user: User) -> Team | None:
    """The team a form preselects: the one the user submitted to last (or their first)."""
    return member_teams(user).first()


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def team_memberships(team: Team) -> QuerySet[Membership]:
    return team.memberships.select_related("user").order_by("user__username")
