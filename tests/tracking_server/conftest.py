"""One PostgreSQL cluster and one team MLflow server (basic-auth logins, proxied artifacts) for the
session, started as docs/how-to/team-mlflow.md starts it (servers.py); skipped where PostgreSQL is not
installed."""

import pytest

from .servers import TeamServer, postgres_bin, team_server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> TeamServer:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): no team-server test can run")
    with team_server(tmp_path_factory.mktemp("team_artifacts")) as started:
        yield started


@pytest.fixture(scope="module")
def as_admin(server):
    """This test process logged in as the server's admin (MLflow's environment variables), for a module."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.login().items():
            patch.setenv(key, value)
        yield patch
