"""The operator endpoints: ``/docs``, ``/openapi.json`` and ``/metrics``.

With an operator listener they are served there only (the participant listener answers
404, and the operator listener serves nothing else but health); without one they need the
admin token. ``/docs`` renders from assets the server serves itself: headless Chromium,
with every host name but loopback unresolvable, shows Swagger UI with the API's operations.

Which listener serves what is a property of the sockets ``secagg server`` binds, so those
tests, and Chromium, run against a server subprocess; the admin-token rule without an
operator listener is the app's own and runs in process.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.service.harness import InProcessServer, ServerProcess

OPERATOR_PATHS = ("/docs", "/docs/static/swagger-ui-bundle.js", "/openapi.json", "/metrics")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no internet: only loopback resolves
    "--virtual-time-budget=20000",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenless_operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(directory=tmp_path_factory.mktemp("no-operator-listener"), dev=False, operator_listener=False)
    yield server.start()
    server.stop()


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_operator_endpoints_are_served_on_the_operator_listener_only(socket_server: ServerProcess, path: str) -> None:
    with httpx.Client(timeout=30) as client:
        participant = client.get(socket_server.base_url + path)
        assert participant.status_code == 404, participant.text[:200]
        assert client.get(socket_server.operator_url + path).status_code == 200


def test_the_operator_listener_serves_no_participant_or_admin_api(socket_server: ServerProcess) -> None:
    with httpx.Client(timeout=30) as client:
        assert client.get(socket_server.operator_url + "/v1/work").status_code == 404
        headers = {"Authorization": f"Bearer {socket_server.admin_token}"}
        assert client.get(socket_server.operator_url + "/v1/admin/participants", headers=headers).status_code == 404
        assert client.get(socket_server.operator_url + "/readyz").status_code == 200


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_without_an_operator_listener_the_operator_endpoints_need_the_admin_token(
    tokenless_operator_server: InProcessServer, path: str
) -> None:
    url = tokenless_operator_server.base_url + path
    with tokenless_operator_server.client() as client:
        refused = client.get(url)
        assert refused.status_code == 401
        assert refused.json()["type"] == "urn:secagg:problem:admin-unauthorized"
        headers = {"Authorization": f"Bearer {tokenless_operator_server.admin_token}"}
        assert client.get(url, headers=headers).status_code == 200


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (.ci/run installs the Debian package chromium as root)")


def test_docs_render_swagger_ui_in_headless_chromium_without_internet(socket_server: ServerProcess) -> None:
    chromium = _chromium()
    try:
        rendered = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, "--dump-dom", socket_server.operator_url + "/docs"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"headless Chromium could not be started: {exc}")
    if rendered.returncode != 0 and not rendered.stdout:
        pytest.skip(f"headless Chromium could not be started: {rendered.stderr[-500:]}")
    dom = rendered.stdout
    assert 'class="swagger-ui' in dom, dom[:2000]
    assert "opblock" in dom, "Swagger UI rendered no operation"
    for operation in ("/v1/rounds/{round_id}/messages", "/v1/admin/rounds", "/v1/work"):
        assert operation in dom, f"{operation} is not on the rendered page"
