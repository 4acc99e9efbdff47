import pytest
from django.urls import reverse

from webapp.experiments.forms import ExperimentForm, option_field_name
from webapp.experiments.models import Experiment

pytestmark = pytest.mark.django_db


def as_browser_submits(form: ExperimentForm) -> dict:
    """The POST a browser sends for an untouched form: initial values, unchecked boxes left out."""
    data = {}
    for name, field in form.fields.items():
        value = form.get_initial_for_field(field, name)
        if value is True:
            data[name] = "on"
        elif value is not None and value is not False:
            data[name] = value
    return data


VALID = {**as_browser_submits(ExperimentForm()), "name": "digits baseline", "team": "vision", "budget": "4", "epochs": "2",
         "top_k": "2"}


def post(client, **changes):
    data = {**VALID, **changes}
    return client.post(reverse("experiment_new"), {k: v for k, v in data.items() if v is not None})


def test_the_form_needs_a_login(client):
    response = client.get(reverse("experiment_new"))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_the_form_lists_every_component_and_its_options(alice_client):
    page = alice_client.get(reverse("experiment_new")).content.decode()
    for name in ("chain_cnn", "random", "train", "digits"):
        assert f'value="{name}"' in page
    assert option_field_name("space", "chain_cnn", "max_layers") in page


def test_a_valid_form_creates_an_experiment_and_queues_it_on_commit(alice_client, alice,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(alice_client, **{option_field_name("space", "chain_cnn", "max_layers"): "3"})
    experiment = Experiment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("experiment_detail", args=[experiment.pk])
    assert len(callbacks) == 1  # the enqueue, run only once the row is committed
    assert experiment.status == "queued" and experiment.created_by == alice
    assert experiment.budget == 4 and experiment.epochs == 2 and experiment.top_k == 2
    assert experiment.options["space"]["max_layers"] == 3
    assert experiment.options["strategy"] == {"no_repeats": True, "max_attempts": 1000}


@pytest.mark.parametrize("changes, field, message", [
    ({"budget": "0"}, "budget", "greater than or equal to 1"),
    ({"budget": "lots"}, "budget", "whole number"),
    ({"epochs": "0"}, "epochs", "greater than or equal to 1"),
    ({"patience": "-1"}, "patience", "greater than or equal to 0"),
    ({"max_seconds": "-5"}, "max_seconds", "greater than or equal to 0"),
    ({"strategy": "magic"}, "strategy", "Select a valid choice"),
    ({"space": "nope"}, "space", "Select a valid choice"),
    ({"dataset": "imagenet"}, "dataset", "Select a valid choice"),
    ({"name": ""}, "name", "This field is required"),
    ({"name": "   "}, "name", "This field is required"),
    ({"name": "x" * 101}, "name", "at most 100 characters"),
    ({option_field_name("space", "chain_cnn", "max_layers"): "0"}, option_field_name("space", "chain_cnn", "max_layers"),
     "must be at least 1"),
    ({option_field_name("space", "chain_cnn", "max_layers"): "99"},
     option_field_name("space", "chain_cnn", "max_layers"), "must be at most 12"),
    ({option_field_name("space", "chain_cnn", "filters"): []}, option_field_name("space", "chain_cnn", "filters"),
     "choose at least one"),
    ({option_field_name("estimator", "train", "lr"): "-1"}, option_field_name("estimator", "train", "lr"),
     "must be at least"),
])
def test_invalid_values_reshow_the_form_with_a_message_and_create_nothing(alice_client, changes, field, message):
    response = post(alice_client, **changes)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert any(message in e for e in errors[field]), errors[field]
    assert message in response.content.decode() or message.replace("'", "&#x27;") in response.content.decode()
    assert Experiment.objects.count() == 0


def test_options_of_components_not_selected_are_ignored(alice_client, django_capture_on_commit_callbacks):
    # A bogus value in another strategy's option group must not block this experiment.
    with django_capture_on_commit_callbacks():
        response = post(alice_client, **{"opt-strategy-other-x": "junk"})
    assert response.status_code == 302


def test_a_name_that_is_not_utf8_gets_the_same_message_on_the_form_as_from_the_command(alice_client, alice):
    from django.core.management import CommandError, call_command

    from urllib.parse import urlencode

    # What a client sends that encodes the name in Latin-1: the byte 0xE9 alone is not UTF-8.
    body = urlencode({k: v for k, v in VALID.items() if k != "name"}, doseq=True) + "&name=caf%E9"
    response = alice_client.post(reverse("experiment_new"), data=body.encode(),
                                 content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and "is not valid UTF-8 text" in response.content.decode()
    with pytest.raises(CommandError, match="name: is not valid UTF-8 text"):
        call_command("nas", "submit", "--name", "caf\udce9", "--user", "alice")
    assert not Experiment.objects.exists()


def test_an_invalid_value_in_the_group_of_a_component_not_selected_is_never_validated(
        alice_client, django_capture_on_commit_callbacks):
    # Values the fields themselves refuse (not a number, not a choice) in the hidden groups of other components.
    hidden = {option_field_name("strategy", "evolution", "population"): "many",
              option_field_name("estimator", "zero_cost", "proxy"): "magic",
              option_field_name("space", "mlp", "max_layers"): "0"}
    with django_capture_on_commit_callbacks():
        response = post(alice_client, **hidden)
    assert response.status_code == 302, response.context["form"].errors
    experiment = Experiment.objects.get()
    assert "population" not in experiment.options["strategy"] and experiment.strategy == "random"


def test_every_error_of_the_selected_components_shows_next_to_a_field_the_page_shows(alice_client):
    import re

    response = post(alice_client, **{"strategy": "evolution",
                                     option_field_name("strategy", "evolution", "population"): "many",
                                     option_field_name("space", "mlp", "max_layers"): "junk"})
    assert response.status_code == 200 and Experiment.objects.count() == 0
    errors = response.context["form"].errors
    assert list(errors) == [option_field_name("strategy", "evolution", "population")]
    page = response.content.decode()
    # The error sits inside the field's own block, inside the evolution group the page shows for the selection.
    group = re.search(r'<fieldset class="options" data-component="strategy" data-name="evolution">(.*?)</fieldset>',
                      page, re.S).group(1)
    assert 'id="field-opt-strategy-evolution-population"' in group and "Enter a whole number" in group

