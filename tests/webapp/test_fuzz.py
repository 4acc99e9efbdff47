"""Fuzzing, in process and bounded: hundreds of generated experiment-form POSTs, and schemathesis over the API's own
OpenAPI schema; no answer is a 5xx, and every experiment stored afterwards passes the engine's validation."""
from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.forms import MultipleChoiceField
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from nasjobs.search import validate_spec
from webapp.experiments.forms import ExperimentForm
from webapp.experiments.models import Experiment

# A submission the form accepts; the fuzz replaces, removes and adds fields around it so that generated input
# reaches every layer (field parsing, the engine's spec and option validation, the quota and review policy).
VALID = {"name": "fuzz", "team": "vision", "dataset": "digits", "space": "chain_cnn", "strategy": "random",
         "estimator": "train", "budget": "3", "epochs": "1", "seed": "0", "patience": "0", "max_seconds": "0",
         "top_k": "1", "parallelism": "1", "failure_policy": "worst", "max_failures": "3"}
FORM = ExperimentForm()
# What a browser sends for the chosen components' multiple-choice options: their checked defaults.
VALID.update({name: field.initial for name, field in FORM.fields.items() if isinstance(field, MultipleChoiceField)
              and name.startswith(("opt-space-chain_cnn-", "opt-strategy-random-", "opt-estimator-train-"))})
FIELDS = sorted(FORM.fields)
NAMES = st.sampled_from(["chain_cnn", "mlp", "nb201", "darts", "random", "evolution", "bo", "darts", "train",
                         "benchmark", "zero_cost", "weight_sharing", "digits", "mnist1d", "nb201-cifar10",
                         "upload-1", "no-such-component", "vision", "speech"])
SCALARS = st.one_of(
    st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=300), NAMES,
    st.integers(min_value=-10**30, max_value=10**30).map(str), st.floats(allow_nan=True).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "0x10", "1_000", "true", "[1, 2]", '{"a": 1}',
                     "\x00", "\ufffd", "9" * 5000, "-1", "0", "2147483648", "9223372036854775808"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=30),
                 st.builds(lambda c, n, o: f"opt-{c}-{n}-{o}", st.sampled_from(["space", "strategy", "estimator"]),
                           NAMES, st.sampled_from(["max_layers", "population", "epochs", "ops", "fidelity", "x"])))
POSTS = st.builds(lambda drop, changes, base: {**{k: v for k, v in (VALID if base else {}).items() if k not in drop},
                                                **changes},
                  st.sets(st.sampled_from(sorted(VALID)), max_size=4), st.dictionaries(KEYS, VALUES, max_size=8),
                  st.booleans())
# No shrinking phase: a failure reports the generated POST as it was, within the test's time.
FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def stored_experiments_are_valid() -> int:
    count = 0
    for experiment in Experiment.objects.all():
        validate_spec(experiment.spec())  # raises SpecError on a spec the engine would refuse
        count += 1
    return count


@pytest.mark.django_db
def test_generated_experiment_form_posts_never_500_and_store_only_valid_specs(alice):
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    url = reverse("experiment_new")
    seen: dict[int, int] = {}

    @FUZZ
    @given(post=POSTS)
    @example(post=VALID)
    def submit(post: dict) -> None:
        response = client.post(url, post)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (post, response.content[-2000:])
        sent = any(v != [] for v in post.values())  # an empty list sends nothing: an empty POST shows a blank form
        if response.status_code == 200 and sent:  # the form again, saying what is wrong
            assert b'class="errorlist' in response.content, post
        elif response.status_code >= 400:
            assert response.content.strip(), post

    submit()
    assert sum(seen.values()) >= 120 and seen.get(302), seen  # some got through and were created
    assert stored_experiments_are_valid() == seen[302]


# The API, from the schema it serves -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_api_never_answers_5xx_to_what_its_schema_allows(alice):
    """schemathesis generates requests from the schema the API serves (drf-spectacular), every operation in turn,
    sent in process through the WSGI application with alice's token."""
    from drf_spectacular.generators import SchemaGenerator

    loaded = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
    loaded.app = get_wsgi_application()
    token = Token.objects.create(user=alice).key
    # As Django's test client does: a request through the WSGI handler would otherwise close the test's connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        answered = fuzz_operations(loaded, token)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    assert len(answered) >= 10, answered
    assert stored_experiments_are_valid() >= 0


def fuzz_operations(loaded, token: str) -> dict[str, set[int]]:
    answered: dict[str, set[int]] = {}
    for result in loaded.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label == "DELETE /api/token/":
            continue  # revoking the fuzzer's own token would leave every later case at 401

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case) -> None:
            response = case.call(headers={"Authorization": f"Token {token}"})
            answered.setdefault(label, set()).add(response.status_code)
            assert response.status_code < 500, (label, case.path_parameters, case.query, case.body,
                                                response.text[-2000:])

        call()
    return answered
