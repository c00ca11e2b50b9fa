"""Schemathesis against the OpenAPI schema of the dashboard application (ASGI, no network):
no generated request, valid or not, makes the server answer 5xx.

The schema is the application's own OpenAPI document (built once, without a database);
each operation's requests go to an application on a data directory holding one phantom
study analysed by the real worker code (job 1, see ``conftest.analysed_template``), with
HTTP Basic credentials of a real user. Bounded and deterministic: derandomised, at most
``EXAMPLES_PER_OPERATION`` generated cases per operation and phase.
"""

from __future__ import annotations

import base64
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from webenv import PASSWORD, USER, Env, make_settings

from strokeflow.store.models import Job, Study
from strokeflow.web.app import create_app

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
EXAMPLES_PER_OPERATION = 15


def _openapi_document() -> dict[str, object]:
    # Only the routes matter here: no database is touched (no migration, unbound sessions).
    app = create_app(
        make_settings(Path("/nonexistent/strokeflow-schema"), session_secret="schema-only"),
        sessions=sessionmaker(),
        enqueue=lambda _ids: None,
        queue_pending=lambda: 0,
        migrate=False,
    )
    return dict(app.openapi())


schema = schemathesis.openapi.from_dict(_openapi_document())
# The operations addressing one job or study, to be run again on the analysed one.
on_records = schema.include(path_regex=r"\{(job_id|study_uid)\}")


def _bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@schema.parametrize()
@_bounded(EXAMPLES_PER_OPERATION)
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, env: Env) -> None:
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error], app=env.app)


@on_records.parametrize()
@_bounded(3)
def test_requests_on_the_analysed_job_and_study_get_no_server_error(
    case: schemathesis.Case, env: Env
) -> None:
    # Random ids almost never name the one job and study; here they always do, while
    # headers, query and methods stay generated.
    with env.sessions() as session:
        study_uid = session.scalars(select(Study.study_uid).join(Job).where(Job.id == 1)).one()
    for name, value in (("job_id", 1), ("study_uid", study_uid)):
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = value
    response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error], app=env.app)
    if case.method == "GET":
        # The pinned records exist: refused (401, 422) or served, never "not found".
        assert response.status_code != 404, response.text
