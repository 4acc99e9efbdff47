"""Tell an experiment's owner (e-mail) and its team (webhook) that it finished, failed, or was reviewed."""
from __future__ import annotations

import json
import logging
import urllib.request

from django.conf import settings
from django.core.mail import send_mail

log = logging.getLogger(__name__)
NOTIFIED = ("finished", "failed", "approved", "rejected")


def notification_payload(experiment, action: str, detail: str) -> dict:
    return {"event": f"experiment.{action}", "experiment": experiment.pk, "name": experiment.name,
            "team": experiment.team.name, "owner": experiment.created_by.username if experiment.created_by else None,
            "status": experiment.status, "detail": detail, "best_val_acc": experiment.best_val_acc,
            "test_acc": experiment.test_acc, "url": f"{settings.NAS_SITE_URL.rstrip('/')}/experiments/{experiment.pk}/",
            "text": f"nasboard: experiment #{experiment.pk} '{experiment.name}' {action}" + (f": {detail}" if detail
                                                                                           else "")}


def notify(experiment_id: int, action: str, detail: str = "") -> None:
    """Deliver both notifications. A failed delivery is logged and otherwise ignored: it never touches the run."""
    from webapp.experiments.models import Experiment

    try:
        experiment = Experiment.objects.select_related("team", "created_by").get(pk=experiment_id)
        payload = notification_payload(experiment, action, detail)
    except Exception:
        log.exception("notification for experiment %s not prepared", experiment_id)
        return
    owner = experiment.created_by
    if owner is not None and owner.email:
        try:
            send_mail(payload["text"][:150], f"{payload['text']}\n\n{payload['url']}\n", None, [owner.email])
        except Exception as exc:
            log.warning("e-mail to the owner of experiment %s failed: %s", experiment_id, exc)
    if experiment.team.webhook_url:
        request = urllib.request.Request(experiment.team.webhook_url, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=settings.NAS_WEBHOOK_TIMEOUT) as response:
                response.read(1024)
        except Exception as exc:
            log.warning("webhook of team %s for experiment %s failed: %s", experiment.team.name, experiment_id, exc)
