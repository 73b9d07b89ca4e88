"""No credential in logs or error messages: fake credentials in the environment, errors provoked through the CLI
(at DEBUG, where client libraries print request bodies) and the data sources, every captured line searched for them.

The predictor's side (its log and its answers under upstream faults) is checked in test_hardening_upstream.py, which
runs the server with the same kind of fake credentials. tests/test_security.py covers the repository tree, the
image, the manifests and the compiled pipeline.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_helpers import run_lulc
from serving_helpers import free_port
from standins import Fault
from standins.ohsome import SAMPLE_OSM, OhsomeStandIn
from standins.sentinelhub import PROCESS_PATH, TOKEN_PATH, SentinelHubStandIn, load_patches

from lulc_core.redaction import MASK, RedactingFilter, install_redaction, redact, secret_values

REPO = Path(__file__).resolve().parents[1]
# Fake credentials, built at run time so that the repository's own secret scan has nothing to find.
CANARIES = {
    name: f"canary-{name.lower().replace('_', '-')}-{i}f3a9c21"
    for i, name in enumerate(
        ["SH_CLIENT_SECRET", "NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "KFP_TOKEN"]
    )
}
CLIENT_ID = "lulc-canary-client"


def leaked(*texts: str) -> list[str]:
    return sorted(name for name, value in CANARIES.items() if any(value in t for t in texts))


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.delenv("SH_CREDENTIALS_DIR", raising=False)
    return CANARIES


@pytest.fixture
def sh(canaries: dict[str, str]) -> Iterator[SentinelHubStandIn]:
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    with SentinelHubStandIn({CLIENT_ID: canaries["SH_CLIENT_SECRET"]}) as server:
        yield server  # type: ignore[misc]


def test_redact_masks_environment_secrets_urls_and_form_bodies(canaries: dict[str, str], tmp_path: Path) -> None:
    secret = canaries["SH_CLIENT_SECRET"]
    text = f"body grant_type=client_credentials&client_secret={secret}; uri http://u:{canaries['KFP_TOKEN']}@h:1/x"
    assert leaked(redact(text)) == [] and redact(text).count(MASK) == 2
    url = "https://admin:hunter22@mlflow.example.org/api"  # pragma: allowlist secret
    assert redact(url) == f"https://admin:{MASK}@mlflow.example.org/api"
    assert redact("nothing secret here: ohsome_url https://api.ohsome.org/v1") == (
        "nothing secret here: ohsome_url https://api.ohsome.org/v1"
    )
    mounted = tmp_path / "sh"
    mounted.mkdir()
    (mounted / "client_secret").write_text("mounted-secret-value-42\n")
    assert "mounted-secret-value-42" in secret_values({"SH_CREDENTIALS_DIR": str(mounted)})
    assert "short" not in secret_values({"MY_TOKEN": "short"})  # flags and tiny values stay readable


def test_the_log_filter_masks_messages_arguments_and_tracebacks(canaries: dict[str, str]) -> None:
    secret = canaries["NEPTUNE_API_TOKEN"]
    try:
        raise RuntimeError(f"token {secret} rejected")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login with %s", (secret,), sys.exc_info())
    assert RedactingFilter().filter(record) is True
    line = logging.Formatter().format(record)
    assert not leaked(line) and line.count(MASK) == 2 and "RuntimeError" in line


def _imagery_cli(tmp: Path, sh: SentinelHubStandIn) -> list[str]:
    from lulc_core.geo import Tile
    from lulc_core.grid import write_tiles

    patch = next(p for p in load_patches() if p.id == "637U_59R_1_3")
    w, _, _, n = patch.bounds
    tile = Tile(
        id="t0",
        crs=patch.crs.to_string(),
        bounds=(w, n - 160, w + 160, n),
        resolution=10.0,
        start=patch.s2_date,
        end=patch.s2_date,
    )
    write_tiles([tile], tmp / "tiles.geojson")
    run = {
        "work_dir": str(tmp / "work"),
        "area": {"bbox": [9.8, 57.2, 9.9, 57.3], "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
        "imagery": {
            "store": "sentinelhub",
            "bands": ["B04"],
            "sentinelhub": {"base_url": sh.url, "token_url": sh.token_url, "backoff_s": 0.01, "max_retries": 1},
        },
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.geojson"},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(run))
    return ["-v", "data", "imagery", "-c", str(tmp / "run.yaml"), "-t", str(tmp / "tiles.geojson")]


def test_cli_at_debug_level_with_failing_sentinel_hub(
    sh: SentinelHubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lulc -v`: requests-oauthlib logs the token request body and the token; Sentinel Hub fails three ways."""
    args = _imagery_cli(tmp_path, sh)
    outputs = []
    sh.faults.add(f"POST {PROCESS_PATH}", Fault.http(503), times=None)
    code, err = run_lulc(capsys, *args, "-o", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 1 and "Sentinel Hub" in err
    assert "client_secret=" + MASK in err  # the DEBUG line is there, with the value masked
    outputs.append(err)
    sh.faults.clear()
    echo = f"Invalid client secret {CANARIES['SH_CLIENT_SECRET']} for client {CLIENT_ID}"
    sh.faults.add(f"POST {TOKEN_PATH}", Fault.http(401, message=echo), times=None)  # an upstream echoing it back
    code, err = run_lulc(capsys, *args, "-o", str(tmp_path / "b"))
    assert code == 1 and "Invalid client secret" in err
    outputs.append(err)
    sh.faults.clear()
    code, err = run_lulc(capsys, *args, "-o", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    outputs.append(err)
    files = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert leaked(*outputs, *files) == []


def test_cli_registry_with_a_password_in_the_tracking_uri(
    canaries: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://lulc:{canaries['MLFLOW_TRACKING_PASSWORD']}@127.0.0.1:{free_port()}"
    code, err = run_lulc(capsys, "-v", "registry", "list", "--tracking-uri", uri, "--work-dir", str(tmp_path))
    assert code != 0 and "127.0.0.1" in err
    assert leaked(err) == []


def test_cli_labels_from_a_failing_ohsome(
    canaries: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ohsome answers 500 with the request's headers echoed; the error line and the DEBUG log stay clean."""
    from standins.sentinelhub import load_patches as patches

    from lulc_core.grid import write_tiles

    patch = next(p for p in patches() if p.id == "637U_59R_1_3")
    w, _, _, n = patch.bounds
    from lulc_core.geo import Tile

    write_tiles(
        [
            Tile(
                id="t0",
                crs=patch.crs.to_string(),
                bounds=(w, n - 320, w + 320, n),
                resolution=10.0,
                start=patch.s2_date,
                end=patch.s2_date,
            )
        ],
        tmp_path / "tiles.geojson",
    )
    with OhsomeStandIn([SAMPLE_OSM]) as ohsome:
        message = f"internal error while serving token {canaries['NEPTUNE_API_TOKEN']}"
        ohsome.faults.add("POST /v1/elements/geometry", Fault.http(500, message=message), times=None)
        run = {
            "work_dir": str(tmp_path / "work"),
            "area": {"bbox": [9.8, 57.2, 9.9, 57.3], "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
            "imagery": {"store": "local", "local_dir": str(REPO / "data" / "sample" / "imagery")},
            "labels": {
                "label_set": str(REPO / "conf" / "labels" / "v3.yaml"),
                "source": "ohsome",
                "ohsome_url": ohsome.api_url,
                "max_retries": 0,
            },
        }
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
        code, err = run_lulc(
            capsys,
            "-v",
            "data",
            "labels",
            "-c",
            str(tmp_path / "run.yaml"),
            "-t",
            str(tmp_path / "tiles.geojson"),
            "-o",
            str(tmp_path / "labels"),
        )
    assert code == 1 and "ohsome" in err and "internal error while serving token" in err
    assert leaked(err) == []


def test_install_redaction_covers_handlers_configured_earlier(canaries: dict[str, str]) -> None:
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("lulc.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_redaction()
        logger.warning("KFP token is %s", canaries["KFP_TOKEN"])
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == f"KFP token is {MASK}"
