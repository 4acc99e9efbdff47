"""Admin: teams with their quotas, review thresholds, webhooks and members."""
from django.contrib import admin

from webapp.teams.models import Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ("user", "role", "last_used_at")
    readonly_fields = ("last_used_at",)
    autocomplete_fields = ("user",)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "monthly_quota", "review_threshold", "webhook_url", "created_at")
    search_fields = ("name",)
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "team", "role", "last_used_at")
    list_filter = ("team", "role")
    search_fields = ("user__username", "team__name")
    list_select_related = ("user", "team")
