"""Teams own experiments and datasets; members see them, team admins manage and review them."""
from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

TEAM_NAME = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$",
                           "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 60)")


class Team(models.Model):
    """A group sharing experiments and compute. Compute is counted in trial-epochs (trials x epochs per trial):
    known exactly when an experiment is submitted and the same on any hardware, unlike GPU-hours."""

    name = models.CharField(max_length=60, unique=True, validators=[TEAM_NAME])
    monthly_quota = models.PositiveBigIntegerField(
        null=True, blank=True, default=100_000,
        help_text="Trial-epochs the team may start per calendar month (empty: no quota)")
    review_threshold = models.PositiveBigIntegerField(
        null=True, blank=True, default=2_000,
        help_text="An experiment costing more trial-epochs than this waits for a reviewer (empty: none does)")
    max_parallelism = models.PositiveIntegerField(
        default=8, help_text="Trials one experiment of the team may have in flight at once, across all workers")
    webhook_url = models.URLField(blank=True, help_text="Receives a JSON POST when an experiment finishes, fails, "
                                                        "is approved or rejected")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member"
        ADMIN = "admin", "team admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Last submission in this team")
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"
