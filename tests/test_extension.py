"""`extension build` and `extension validate` (SPEC A1, B11), held against Zoho's own toolkit.

The toolkit (`zet`, npm package zoho-extension-toolkit) is installed once into a cache folder
and reused; its tests are skipped only when npm is not on PATH.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from app.cli_extension import extension_cli
from app.desk.extension import CALLBACK_EVENTS, MAX_FILE_BYTES, MAX_FILES

# The toolkit version whose validator SPEC A1 and app/desk/extension.py follow.
ZET_VERSION = "1.0.24"
ZET_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deskbridge" / "zet"
SECRET = "xt-secret-Quokka-4f1d9c0b7e"
BASE_URLS = ["https://desk.example.com", "https://x.example.org:8443"]
PROJECT_FILES = [
    "app/css/widget.css",
    "app/img/icon.png",
    "app/img/logo.png",
    "app/translations/en.json",
    "app/widget.html",
    "plugin-manifest.json",
    "resources.json",
]
# A cold npm install may take longer than the suite's default per-test timeout.
zet_timeout = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Zet:
    """Zoho's extension toolkit, run non-interactively in a home of its own."""

    node: str
    script: Path
    home: Path

    def run(self, command: str, project: Path) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HOME": str(self.home),
            "NO_UPDATE_NOTIFIER": "1",
            # `zet pack` runs `npm run prepack`; anything npm writes to stderr (its update notice
            # in a fresh home) makes zet write an empty zip and still exit 0.
            "NPM_CONFIG_UPDATE_NOTIFIER": "false",
            "NPM_CONFIG_FUND": "false",
            "FORCE_COLOR": "0",
        }
        return subprocess.run(
            [self.node, str(self.script), command],
            cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )


@pytest.fixture(scope="session")
def zet(tmp_path_factory: pytest.TempPathFactory) -> Zet:
    """zoho-extension-toolkit at ZET_VERSION, installed into ZET_CACHE unless already there."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: Zoho's extension toolkit (npm package zoho-extension-toolkit) cannot run")
    node = shutil.which("node")
    assert node, "npm is on PATH but node is not"
    ZET_CACHE.mkdir(parents=True, exist_ok=True)
    package = ZET_CACHE / "node_modules" / "zoho-extension-toolkit"
    with open(ZET_CACHE / ".install.lock", "w") as lock:
        # Concurrent test runs share the cache: one installs, the others wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(package) != ZET_VERSION:
            install = subprocess.run(
                [npm, "install", "--prefix", str(ZET_CACHE), "--no-audit", "--no-fund", "--no-update-notifier",
                 "--save-exact", f"zoho-extension-toolkit@{ZET_VERSION}"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
            )
            if install.returncode != 0:
                pytest.fail(f"npm install zoho-extension-toolkit@{ZET_VERSION} failed:\n{install.stderr[-3000:]}")
    assert _installed_version(package) == ZET_VERSION
    return Zet(node=node, script=package / "index.js", home=tmp_path_factory.mktemp("zet-home"))


def _installed_version(package: Path) -> str | None:
    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def run_extension(app: Flask, *args: str) -> Result:
    app.cli.add_command(extension_cli)
    return app.test_cli_runner().invoke(args=["extension", *args])


def build(app: Flask, out: Path, base_url: str, *args: str) -> Result:
    return run_extension(app, "build", "--base-url", base_url, "--out", str(out), *args)


def secret_settings(with_secret: bool) -> dict[str, str]:
    return {"DESK_EXTENSION_SECRET": SECRET} if with_secret else {}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2))


# --- Building -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_secret", [False, True], ids=["no-secret", "secret"])
@pytest.mark.parametrize("base_url", BASE_URLS)
def test_built_project_passes_extension_validate(
    make_app: Callable[..., Flask], tmp_path: Path, base_url: str, with_secret: bool
):
    app = make_app(**secret_settings(with_secret))
    out = tmp_path / "ext"

    built = build(app, out, base_url)

    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout) == {
        "out": str(out), "base_url": base_url, "files": PROJECT_FILES, "callbacks": with_secret,
    }
    assert built.stderr == ""
    checked = run_extension(app, "validate", str(out))
    assert checked.exit_code == 0, checked.stdout
    assert checked.stdout.startswith("OK")


@zet_timeout
@pytest.mark.parametrize("with_secret", [False, True], ids=["no-secret", "secret"])
@pytest.mark.parametrize("base_url", BASE_URLS)
def test_zet_validates_and_packs_a_built_project_unchanged(
    make_app: Callable[..., Flask], tmp_path: Path, zet: Zet, base_url: str, with_secret: bool
):
    out = tmp_path / "ext"
    assert build(make_app(**secret_settings(with_secret)), out, base_url).exit_code == 0

    validated = zet.run("validate", out)
    packed = zet.run("pack", out)

    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Validation Rules passed successfully" in validated.stdout
    assert packed.returncode == 0, packed.stdout + packed.stderr
    archive = out / "dist" / "ext.zip"
    assert zipfile.is_zipfile(archive), packed.stdout + packed.stderr
    with zipfile.ZipFile(archive) as packed_zip:
        assert packed_zip.testzip() is None
        assert sorted(packed_zip.namelist()) == PROJECT_FILES
        assert json.loads(packed_zip.read("plugin-manifest.json")) == read_json(out / "plugin-manifest.json")
        assert packed_zip.read("app/img/logo.png") == (out / "app/img/logo.png").read_bytes()


@pytest.mark.parametrize("base_url", BASE_URLS)
def test_build_declares_the_channel_endpoints_and_config_params_for_the_base_url(
    make_app: Callable[..., Flask], tmp_path: Path, base_url: str
):
    assert build(make_app(), tmp_path / "ext", base_url).exit_code == 0

    manifest = read_json(tmp_path / "ext" / "plugin-manifest.json")
    channel = read_json(tmp_path / "ext" / "resources.json")["channel"]
    assert channel["sync"] == {"pull": f"{base_url}/desk/pull", "push": f"{base_url}/desk/push"}
    assert channel["redirectUrl"] == f"{base_url}/desk/redirect"
    assert channel["contentTypes"] == ["text/plain", "text/html"]
    assert channel["acceptAttachments"] is False
    assert (tmp_path / "ext" / channel["channelLogoPath"].lstrip("/")).is_file()
    assert manifest["service"] == "DESK"
    assert [widget["location"] for widget in manifest["modules"]["widgets"]] == ["desk.extension.preference"]
    assert manifest["whiteListedDomains"] == [base_url]
    assert manifest["cspDomains"] == {"connect-src": [base_url]}
    params = {param["name"]: param for param in manifest["config"]}
    assert set(params) == {"channelId", "channelToken"}
    for param in params.values():
        assert (param["type"], param["secure"], param["mandatory"], param["userdefined"]) == ("text", False, True, True)
    assert "callbackListener" not in manifest and "secret" not in manifest


def test_build_with_the_extension_secret_declares_every_callback_and_the_secret(
    make_app: Callable[..., Flask], tmp_path: Path
):
    base_url = "https://x.example.org:8443"
    assert build(make_app(DESK_EXTENSION_SECRET=SECRET), tmp_path / "ext", base_url).exit_code == 0

    manifest = read_json(tmp_path / "ext" / "plugin-manifest.json")
    assert manifest["secret"] == SECRET
    assert manifest["callbackListener"] == {event: f"{base_url}/desk/callbacks/{event}" for event in CALLBACK_EVENTS}
    documented = {"onInstall", "onUninstall", "onUpdate", "onConfigParamAdd", "onConfigParamDelete",
                  "onZohoAuthorise", "onTPAAuthorise", "onTPARevoke"}
    checked_by_zet = {"onDeskAuthorise", "onTPAAuthorise", "onTPARevoke", "onUpdate", "onConfigParamChange",
                      "onUninstall"}
    assert set(manifest["callbackListener"]) == documented | checked_by_zet


def test_accept_attachments_flag_lets_agents_attach_files(make_app: Callable[..., Flask], tmp_path: Path):
    assert build(make_app(), tmp_path / "ext", BASE_URLS[0], "--accept-attachments").exit_code == 0

    assert read_json(tmp_path / "ext" / "resources.json")["channel"]["acceptAttachments"] is True


def test_name_option_names_the_widget_and_the_channel(make_app: Callable[..., Flask], tmp_path: Path):
    assert build(make_app(), tmp_path / "ext", BASE_URLS[0], "--name", "Acme SMS").exit_code == 0

    manifest = read_json(tmp_path / "ext" / "plugin-manifest.json")
    assert manifest["modules"]["widgets"][0]["name"] == "Acme SMS"
    assert read_json(tmp_path / "ext" / "resources.json")["channel"]["resourceName"] == "Acme SMS"
    assert "<h1>Acme SMS</h1>" in (tmp_path / "ext" / "app" / "widget.html").read_text()


def test_secret_is_written_to_plugin_manifest_only(
    make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "ext"

    built = build(make_app(DESK_EXTENSION_SECRET=SECRET), out, BASE_URLS[0])

    assert built.exit_code == 0
    assert SECRET not in built.stdout and SECRET not in built.stderr
    assert SECRET not in caplog.text
    assert SECRET not in "".join(capfd.readouterr())
    holding = sorted(path.relative_to(out).as_posix() for path in out.rglob("*")
                     if path.is_file() and SECRET.encode() in path.read_bytes())
    assert holding == ["plugin-manifest.json"]
    assert (out / "plugin-manifest.json").stat().st_mode & 0o077 == 0, "the secret's file is readable by others"


def test_widget_page_explains_both_params_and_loads_nothing_from_the_network(
    make_app: Callable[..., Flask], tmp_path: Path
):
    assert build(make_app(), tmp_path / "ext", BASE_URLS[0]).exit_code == 0
    page = (tmp_path / "ext" / "app" / "widget.html").read_text()
    links = _Links()
    links.feed(page)

    for text in ("channelId", "channelToken", "flask --app wsgi channel create", BASE_URLS[0]):
        assert text in page
    assert links.found and all(not value.startswith(("http:", "https:", "//")) for value in links.found)
    assert all((tmp_path / "ext" / "app" / value).is_file() for value in links.found)
    assert "url(" not in (tmp_path / "ext" / "app" / "css" / "widget.css").read_text()


class _Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value is not None]


@pytest.mark.parametrize(("path", "size"), [("app/img/logo.png", 128), ("app/img/icon.png", 32)])
def test_logo_and_icon_are_real_pngs_of_their_size(
    make_app: Callable[..., Flask], tmp_path: Path, path: str, size: int
):
    assert build(make_app(), tmp_path / "ext", BASE_URLS[0]).exit_code == 0
    data = (tmp_path / "ext" / path).read_bytes()

    assert len(data) < 500_000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = _png_chunks(data[8:])
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height, depth, color) == (size, size, 8, 6)
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + 4 * width)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        kind, body, crc = data[4:8], data[8:8 + length], data[8 + length:12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        data = data[12 + length:]
    return chunks


# --- Refused input ------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", [
    "http://desk.example.com",
    "https://desk.example.com/deskbridge",
    "https://desk.example.com/?a=1",
    "https://desk.example.com/#top",
    "https://desk.example.com?",
    "ftp://desk.example.com",
    "desk.example.com",
    "https://",
    "https://user:pass@desk.example.com",
    "https://desk.example.com:99999",
    "https://desk example.com",
])
def test_bad_base_url_is_refused_in_one_line_and_nothing_is_written(
    make_app: Callable[..., Flask], tmp_path: Path, base_url: str
):
    result = build(make_app(), tmp_path / "build" / "ext", base_url)

    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["error"] == "invalid_base_url"
    assert not (tmp_path / "build").exists()


def test_bad_name_is_refused_in_one_line_and_nothing_is_written(make_app: Callable[..., Flask], tmp_path: Path):
    result = build(make_app(), tmp_path / "build" / "ext", BASE_URLS[0], "--name", "1 <script>")

    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["error"] == "invalid_name"
    assert not (tmp_path / "build").exists()


def test_missing_base_url_without_public_base_url_is_refused_in_one_line(
    make_app: Callable[..., Flask], tmp_path: Path
):
    result = run_extension(make_app(PUBLIC_BASE_URL=""), "build", "--out", str(tmp_path / "build"))

    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["error"] == "invalid_base_url"
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("base_url", ["http://localhost:5000", "http://127.0.0.1"])
def test_local_plain_http_base_url_is_accepted_with_a_warning(
    make_app: Callable[..., Flask], tmp_path: Path, base_url: str
):
    result = build(make_app(), tmp_path / "ext", base_url)

    assert result.exit_code == 0
    (line,) = result.stderr.splitlines()
    assert "plain http" in json.loads(line)["message"]
    assert read_json(tmp_path / "ext" / "resources.json")["channel"]["sync"]["push"] == f"{base_url}/desk/push"


def test_out_that_is_not_empty_is_refused_unless_force_replaces_an_earlier_build(
    make_app: Callable[..., Flask], tmp_path: Path
):
    app = make_app()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = tmp_path / "ext"
    assert build(app, out, BASE_URLS[0]).exit_code == 0
    (out / "dist").mkdir()
    (out / "dist" / "ext.zip").write_bytes(b"an old package")
    (out / "app" / "stale.html").write_text("from an older build")
    (out / "README.txt").write_text("kept")

    refused = build(app, out, BASE_URLS[1])
    refused_foreign = build(app, foreign, BASE_URLS[1], "--force")
    replaced = build(app, out, BASE_URLS[1], "--force")

    assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1
    assert "--force" in json.loads(refused.stderr)["message"]
    assert refused_foreign.exit_code == 1 and len(refused_foreign.stderr.splitlines()) == 1
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]
    assert replaced.exit_code == 0, replaced.stderr
    assert read_json(out / "plugin-manifest.json")["whiteListedDomains"] == [BASE_URLS[1]]
    assert not (out / "dist").exists() and not (out / "app" / "stale.html").exists()
    assert (out / "README.txt").read_text() == "kept"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "a staging folder is left over"


def test_validate_refuses_a_missing_directory_in_one_line(make_app: Callable[..., Flask], tmp_path: Path):
    result = run_extension(make_app(), "validate", str(tmp_path / "nowhere"))

    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["error"] == "not_found"


# --- Planted violations: our validator and zet both refuse each ------------------------------------


def _no_widget(project: Path) -> None:
    manifest = read_json(project / "plugin-manifest.json")
    manifest["modules"]["widgets"] = []
    write_json(project / "plugin-manifest.json", manifest)


def _callbacks_without_secret(project: Path) -> None:
    manifest = read_json(project / "plugin-manifest.json")
    assert manifest["callbackListener"]
    del manifest["secret"]
    write_json(project / "plugin-manifest.json", manifest)


def _edit_channel(**changes: Any) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        resource_list = read_json(project / "resources.json")
        resource_list["channel"].update(changes)
        write_json(project / "resources.json", resource_list)

    return edit


def _channel_as_a_list(project: Path) -> None:
    resource_list = read_json(project / "resources.json")
    resource_list["channel"] = [resource_list["channel"]]
    write_json(project / "resources.json", resource_list)


def _twenty_one_config_params(project: Path) -> None:
    manifest = read_json(project / "plugin-manifest.json")
    extra = {"type": "text", "secure": False, "mandatory": False, "userdefined": True}
    manifest["config"] += [{"name": f"extra{index}", **extra} for index in range(21 - len(manifest["config"]))]
    write_json(project / "plugin-manifest.json", manifest)


def _no_translations(project: Path) -> None:
    (project / "app" / "translations" / "en.json").unlink()


def _too_many_files(project: Path) -> None:
    (project / "app" / "data").mkdir()
    for index in range(MAX_FILES):
        (project / "app" / "data" / f"note{index}.txt").write_text("x")


def _file_over_5_mb(project: Path) -> None:
    (project / "app" / "big.txt").write_bytes(b"x" * (MAX_FILE_BYTES + 1))


# Each planting, the line our validator prints for it, and what zet says about it.
PLANTED = [
    pytest.param(_no_widget, "plugin-manifest.json: modules.widgets:", "at least one widget", id="no-widget"),
    pytest.param(_callbacks_without_secret, "plugin-manifest.json: secret:", 'The "secret" property is missing',
                 id="callbacks-without-secret"),
    pytest.param(_edit_channel(channelLogoPath="app/img/logo.png"), "resources.json: channel.channelLogoPath:",
                 "should start with '/'", id="logo-path-without-slash"),
    pytest.param(_edit_channel(contentTypes=["text/plain", "application/json"]),
                 "resources.json: channel.contentTypes[1]:", '"contentTypes" property should be an array of',
                 id="bad-content-type"),
    pytest.param(_channel_as_a_list, "resources.json: channel:", 'The property "channelLogoPath" is missing',
                 id="channel-as-a-list"),
    pytest.param(_twenty_one_config_params, "plugin-manifest.json: config:", 'The "config" limit exceeded',
                 id="21-config-params"),
    pytest.param(_no_translations, "plugin-manifest.json: locale[0]:", 'The "locale" property is not found',
                 id="no-translations-file"),
    pytest.param(_too_many_files, "app: (files):", "Maximum number of files allowed", id="too-many-files"),
    pytest.param(_file_over_5_mb, "app/big.txt: (size):", "File size exceeds the allowed limit", id="file-over-5-MB"),
]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def planted(make_app: Callable[..., Flask], tmp_path: Path) -> Callable[[Callable[[Path], None]], Path]:
    """A project built with the extension secret, then changed by one planting."""

    def plant(change: Callable[[Path], None]) -> Path:
        project = tmp_path / "ext"
        assert build(make_app(DESK_EXTENSION_SECRET=SECRET), project, BASE_URLS[1]).exit_code == 0
        change(project)
        return project

    return plant


@pytest.mark.parametrize(("change", "expected", "zet_says"), PLANTED)
def test_extension_validate_names_the_file_and_field_of_a_planted_violation(
    make_app: Callable[..., Flask], planted: Callable[..., Path], change: Callable[[Path], None], expected: str,
    zet_says: str,
):
    project = planted(change)

    result = run_extension(make_app(), "validate", str(project))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(expected) for line in lines), result.stdout


@zet_timeout
@pytest.mark.parametrize(("change", "expected", "zet_says"), PLANTED)
def test_zet_validate_also_refuses_a_planted_violation(
    zet: Zet, planted: Callable[..., Path], change: Callable[[Path], None], expected: str, zet_says: str
):
    project = planted(change)

    result = zet.run("validate", project)

    assert result.returncode == 1, result.stdout + result.stderr
    complaints = [line for line in ANSI_ESCAPE.sub("", result.stdout).splitlines() if "==>" in line]
    assert complaints and all(zet_says in line for line in complaints), result.stdout
