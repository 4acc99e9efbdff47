"""Team actions: create teams and users, and the quota and review policy applied to every submission."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from webapp.teams.models import TEAM_NAME, Membership, Team
from webapp.teams.selectors import month_start


class TeamError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def team_create(*, name: str, monthly_quota: int | None = 100_000, review_threshold: int | None = 2_000,
                webhook_url: str = "") -> Team:
    name = (name or "").strip()
    try:
        TEAM_NAME(name)
    except ValidationError as exc:
        raise TeamError("name", f"team name {name!r}: {exc.messages[0]}") from None
    for field, value in (("quota", monthly_quota), ("review_threshold", review_threshold)):
        if value is not None and value < 0:
            raise TeamError(field, "must be 0 or more")
    if Team.objects.filter(name=name).exists():
        raise TeamError("name", f"a team named {name!r} exists already")
    return Team.objects.create(name=name, monthly_quota=monthly_quota, review_threshold=review_threshold,
                               webhook_url=webhook_url)


def user_add(*, username: str, password: str, teams: list[Team], team_admin: bool = False,
             staff: bool = False, email: str = "") -> AbstractBaseUser:
    """Create a user in the given teams (role: member, or team admin). The password is checked by Django's
    validators and never logged."""
    User = get_user_model()
    username = (username or "").strip()
    if not username:
        raise TeamError("username", "give a user name")
    if User.objects.filter(username=username).exists():
        raise TeamError("username", f"a user named {username!r} exists already")
    if not teams and not staff:
        raise TeamError("team", "a user who is not staff needs at least one team")
    email = (email or "").strip()
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise TeamError("email", f"{email!r} is not an e-mail address") from None
    user = User(username=username, is_staff=staff, is_superuser=staff, email=email)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise TeamError("password", " ".join(exc.messages)) from None
    with transaction.atomic():
        user.set_password(password)
        user.save()
        role = Membership.Role.ADMIN if team_admin else Membership.Role.MEMBER
        for team in teams:
            Membership.objects.create(user=user, team=team, role=role)
    return user


def membership_touch(user: AbstractBaseUser, team: Team) -> None:
    """Remember the team the user submitted to, so the next form preselects it."""
    Membership.objects.filter(user=user, team=team).update(last_used_at=timezone.now())


def team_usage(team: Team) -> int:
    """Trial-epochs admitted this calendar month (an experiment counts from the moment it may run)."""
    from webapp.experiments.models import Experiment

    total = Experiment.objects.filter(team=team, admitted_at__gte=month_start()).aggregate(total=Sum("cost"))
    return int(total["total"] or 0)


def review_reason(team: Team, cost: int) -> str:
    """Why an experiment of this cost needs a reviewer before it runs, or "" when it may run at once."""
    if team.review_threshold is not None and cost > team.review_threshold:
        return (f"it costs {cost:,} trial-epochs, over the team's review threshold of "
                f"{team.review_threshold:,}")
    if team.monthly_quota is not None:
        used = team_usage(team)
        if used + cost > team.monthly_quota:
            return (f"it would take the team to {used + cost:,} of its {team.monthly_quota:,} trial-epochs "
                    "this month")
    return ""
