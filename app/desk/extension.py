"""The Zoho Desk extension of one deployment: build the project Zoho's toolkit packs, and
check a project against the toolkit's rules (SPEC A1, B11). No Flask here."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import string
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from app.domain.errors import Invalid

ASSETS = Path(__file__).resolve().parent / "extension_assets"
EXAMPLE_BASE_URL = "https://deskbridge.example.com"
DEFAULT_NAME = "deskbridge"
MANIFEST = "plugin-manifest.json"
RESOURCES = "resources.json"
WIDGET_LOCATION = "desk.extension.preference"
# The events Zoho documents (SPEC A7) and the ones its toolkit checks (A1): which of them fire is unknown.
CALLBACK_EVENTS = (
    "onInstall", "onUninstall", "onUpdate", "onConfigParamAdd", "onConfigParamDelete", "onZohoAuthorise",
    "onTPAAuthorise", "onTPARevoke", "onDeskAuthorise", "onConfigParamChange",
)
# Non-secure, because Desk sends only non-secure params in pull and push bodies (SPEC B2).
CONFIG_PARAMS = (
    {
        "name": "channelId",
        "displayName": "deskbridge channel id",
        "description": "The channel id printed by `flask --app wsgi channel create` (desk.channelId).",
        "type": "text",
        "secure": False,
        "mandatory": True,
        "userdefined": True,
    },
    {
        "name": "channelToken",
        "displayName": "deskbridge channel token",
        "description": "The token printed once by `flask --app wsgi channel create` (desk.channelToken).",
        "type": "text",
        "secure": False,
        "mandatory": True,
        "userdefined": True,
    },
)
# Base URLs on these hosts may use plain http, for trials on one's own machine.
LOCAL_HOSTS = ("localhost", "127.0.0.1")
MAX_NAME_LENGTH = 100

# What zoho-extension-toolkit 1.0.24 accepts (lib/rules/DESK.PluginManifestRule.js, FileCheckRule.js,
# lib/commands/constants.js, lib/utils/file-tree-parser.js), plus the channel logo's documented 500 KB.
NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_ -]*")
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
REQUIRED_MANIFEST_KEYS = ("locale", "storage", "service", "modules", "connectors", "config", "whiteListedDomains")
LOCALES = (
    "en", "ja", "zh", "tw", "es", "de", "fr", "tr", "ru", "pt", "it", "nl", "da", "pl", "sv", "id", "hi", "ro",
    "ta", "te", "he", "ar",
)
WIDGET_LOCATIONS = (
    "desk.ticket.detail.rightpanel", "desk.ticket.detail.subtab", "desk.bottomband", "desk.topband",
    "desk.background", "desk.contact.detail.rightpanel", "desk.contact.detail.subtab", "desk.extension.preference",
    "desk.account.detail.rightpanel", "desk.account.detail.subtab", "desk.ticket.detail.lefttab",
    "desk.contact.detail.lefttab", "desk.account.detail.lefttab", "desk.ticket.detail.moreaction",
    "desk.ticket.thread.moreaction", "desk.ticket.form.rightpanel", "desk.ticket.form.sidepanel",
    "desk.contact.form.rightpanel", "desk.contact.form.sidepanel", "desk.account.form.rightpanel",
    "desk.account.form.sidepanel", "helpcenter.ticket.detail", "desk.extension.telephony", "helpcenter.ticket.form",
    "helpcenter.ticket.list", "helpcenter.invisible", "desk.invisible", "helpcenter.homepage",
    "helpcenter.kb.homepage", "helpcenter.kb.article.list", "helpcenter.kb.article.detail",
    "helpcenter.community.homepage", "helpcenter.community.topic.list", "helpcenter.community.topic.detail",
    "desk.kb.article.detail.subtab", "desk.kb.managekb.lefttab", "desk.ticket.blueprint.transition",
)
SINGLE_WIDGET_LOCATIONS = ("desk.background", "desk.extension.preference", "desk.extension.telephony")
CONFIG_TYPES = ("text", "number", "radio", "switch", "picklist", "multiselect", "checkbox")
MAX_CONFIG_PARAMS = 20
MAX_TEXT_LENGTH = 255
MAX_CSP_DOMAINS = 10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".svg")
PACKED_SUFFIXES = (
    *IMAGE_SUFFIXES, ".css", ".woff", ".woff2", ".ttf", ".eot", ".webm", ".js", ".mp3", ".mp4",
    ".json", ".txt", ".md", ".xml", ".html",
)
CONTENT_TYPES = ("text/plain", "text/html")
URL_SCHEMES = ("http", "https", "wss")
FILE_NAME = re.compile(r"[A-Za-z0-9_.$-]*")
FOLDER_NAME = re.compile(r"[A-Za-z0-9_$-]*")
MAX_FILE_NAME_LENGTH = 50
MAX_FILES = 250
MAX_FILE_BYTES = 5_000_000
MAX_TOTAL_BYTES = 20_000_000
MAX_LOGO_BYTES = 500_000
# What `extension build --force` replaces in an earlier build (zet pack writes dist/).
PROJECT_ENTRIES = ("app", "dist", MANIFEST, RESOURCES)


@dataclass(frozen=True)
class BaseUrl:
    """The public origin of a deployment: scheme, host and port, nothing else."""

    url: str
    warning: str | None = None


@dataclass(frozen=True)
class Built:
    """What `build_project` wrote."""

    out: Path
    files: tuple[str, ...]
    callbacks: bool
    base_url: BaseUrl


@dataclass(frozen=True)
class Violation:
    """One way a project breaks the toolkit's rules, printed as `<file>: <field>: <problem>`."""

    file: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.problem}"


def parse_base_url(raw: str) -> BaseUrl:
    """https://host[:port] (plain http only on localhost or 127.0.0.1, with a warning), else Invalid."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise Invalid("invalid_base_url", f"--base-url {raw!r} is not a URL") from None
    shape = "--base-url must look like https://host[:port], with no path, query or fragment"
    if parts.scheme not in ("https", "http") or not _is_host(parts.hostname) or parts.username is not None:
        raise Invalid("invalid_base_url", f"{shape}, got {raw!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise Invalid("invalid_base_url", f"{shape}, got {raw!r}")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise Invalid("invalid_base_url", f"--base-url must use https (plain http only on localhost), got {raw!r}")
    url = f"{parts.scheme}://{parts.netloc.lower()}"
    if parts.scheme == "http":
        return BaseUrl(url, f"{url} is plain http: Zoho Desk cannot reach it, use it only for local trials")
    return BaseUrl(url)


def check_name(name: str) -> str:
    """The extension's name as the toolkit allows widget names: a letter, then letters, digits, '-', '_', ' '."""
    if not NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise Invalid(
            "invalid_name",
            f"--name must start with a letter and hold only letters, digits, '-', '_' and spaces "
            f"(at most {MAX_NAME_LENGTH} characters), got {name!r}",
        )
    return name


def plugin_manifest(base_url: str, *, name: str = DEFAULT_NAME, secret: str | None = None) -> dict[str, Any]:
    """The plugin-manifest.json of the extension for `base_url`; callbacks only with a secret (SPEC B11, B12)."""
    manifest: dict[str, Any] = {
        "locale": ["en"],
        "service": "DESK",
        "storage": False,
        "type": "org",
        "modules": {
            "widgets": [
                {
                    "name": name,
                    "location": WIDGET_LOCATION,
                    "url": "/app/widget.html",
                    "logo": "/app/img/logo.png",
                    "icon": "/app/img/icon.png",
                }
            ]
        },
        "whiteListedDomains": [base_url],
        "cspDomains": {"connect-src": [base_url]},
        "connectors": [],
        "config": [dict(param) for param in CONFIG_PARAMS],
    }
    if secret:
        manifest["callbackListener"] = {event: f"{base_url}/desk/callbacks/{event}" for event in CALLBACK_EVENTS}
        manifest["secret"] = secret
    return manifest


def resources(base_url: str, *, name: str = DEFAULT_NAME, accept_attachments: bool = False) -> dict[str, Any]:
    """The resources.json of the extension: one channel, pulled and pushed at `base_url` (SPEC A1, B11, B13)."""
    return {
        "channel": {
            "resourceName": name,
            "channelLogoPath": "/app/img/logo.png",
            "acceptAttachments": accept_attachments,
            "updateRecords": False,
            "includeQuotedMessage": False,
            "contentTypes": list(CONTENT_TYPES),
            "sync": {"pull": f"{base_url}/desk/pull", "push": f"{base_url}/desk/push"},
            "redirectUrl": f"{base_url}/desk/redirect",
        }
    }


def render_json(value: Any) -> str:
    """JSON as the builder writes it (and as the repository's manifest.json is kept)."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def project_files(
    base_url: str, *, name: str = DEFAULT_NAME, accept_attachments: bool = False, secret: str | None = None
) -> dict[str, bytes]:
    """Every file of the extension project, by its path inside the project."""
    fill = {"name": name, "base_url": base_url}
    translations = json.loads((ASSETS / "en.json").read_text(encoding="utf-8"))
    page = string.Template((ASSETS / "widget.html").read_text(encoding="utf-8"))
    return {
        MANIFEST: render_json(plugin_manifest(base_url, name=name, secret=secret)).encode(),
        RESOURCES: render_json(resources(base_url, name=name, accept_attachments=accept_attachments)).encode(),
        "app/widget.html": page.substitute({key: escape(value) for key, value in fill.items()}).encode(),
        "app/css/widget.css": (ASSETS / "widget.css").read_bytes(),
        "app/img/logo.png": (ASSETS / "logo.png").read_bytes(),
        "app/img/icon.png": (ASSETS / "icon.png").read_bytes(),
        "app/translations/en.json": render_json(_fill_strings(translations, fill)).encode(),
    }


def build_project(
    out: Path,
    raw_base_url: str,
    *,
    name: str = DEFAULT_NAME,
    accept_attachments: bool = False,
    secret: str | None = None,
    force: bool = False,
) -> Built:
    """Check the input, then write the project to `out`; nothing is written when the input is refused."""
    base_url = parse_base_url(raw_base_url)
    files = project_files(base_url.url, name=check_name(name), accept_attachments=accept_attachments, secret=secret)
    _check_out(out, force=force)
    _write_project(out, files, private=bool(secret))
    return Built(out=out, files=tuple(sorted(files)), callbacks=bool(secret), base_url=base_url)


def validate_project(root: Path) -> list[Violation]:
    """Every way the project at `root` breaks the rules Zoho's toolkit checks before packing (SPEC A1)."""
    found: list[Violation] = []
    manifest = _read_json_object(root, MANIFEST, found)
    if manifest is not None:
        found.extend(_manifest_violations(root, manifest))
    resource_list = _read_json_object(root, RESOURCES, found)
    if resource_list is not None:
        found.extend(_resources_violations(root, resource_list))
    found.extend(_package_violations(root))
    return found


def _fill_strings(value: Any, fill: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return string.Template(value).substitute(fill)
    if isinstance(value, dict):
        return {key: _fill_strings(item, fill) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_strings(item, fill) for item in value]
    return value


def _check_out(out: Path, *, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise Invalid("invalid_out", f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not force:
        raise Invalid("invalid_out", f"--out {out} exists and is not empty: choose another, or --force to replace "
                                     "an earlier build")
    if not (out / MANIFEST).is_file():
        raise Invalid("invalid_out", f"--out {out} holds no {MANIFEST}: --force replaces only an earlier build")


def _write_project(out: Path, files: Mapping[str, bytes], *, private: bool) -> None:
    """Write into a fresh folder beside `out`, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for relative, data in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            # The manifest may hold the extension secret: readable by its owner only.
            mode = 0o600 if private and relative == MANIFEST else 0o644
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
        if not private:
            staging.chmod(0o755)
        if out.exists():
            for entry in PROJECT_ENTRIES:
                old = out / entry
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                elif old.exists() or old.is_symlink():
                    old.unlink()
            for entry in staging.iterdir():
                entry.rename(out / entry.name)
            staging.rmdir()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_json_object(root: Path, name: str, found: list[Violation]) -> dict[str, Any] | None:
    path = root / name
    if not path.is_file():
        found.append(Violation(name, "(file)", "missing"))
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        found.append(Violation(name, "(file)", f"not valid JSON ({exc})"))
        return None
    if not isinstance(value, dict):
        found.append(Violation(name, "(file)", "must be a JSON object"))
        return None
    return value


def _is_host(host: str | None) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(HOST_NAME.fullmatch(host))
    return True


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in URL_SCHEMES and bool(parts.hostname)


def _project_file(root: Path, file: str, field: str, value: Any, *, images: bool) -> Iterator[Violation]:
    """A path like "/app/img/logo.png": it starts with "/", lies inside app/ (only app/ is packed) and exists."""
    if not isinstance(value, str):
        yield Violation(file, field, "must be a string")
        return
    if images and PurePosixPath(value).suffix not in IMAGE_SUFFIXES:
        yield Violation(file, field, f"{value!r} must be an image ({', '.join(IMAGE_SUFFIXES)})")
    if not value.startswith("/"):
        yield Violation(file, field, f'{value!r} must start with "/" (a path from the project folder)')
        return
    parts = PurePosixPath(value.lstrip("/")).parts
    if ".." in parts or parts[:1] != ("app",) or len(parts) < 2:
        yield Violation(file, field, f"{value!r} is not inside app/ (only app/ is packed)")
    elif not (root / Path(*parts)).is_file():
        yield Violation(file, field, f"{value} does not exist")


def _text(file: str, field: str, value: Any, *, required: bool = False) -> Iterator[Violation]:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        yield Violation(file, field, "must be a non-empty string")
    elif len(value) > MAX_TEXT_LENGTH:
        yield Violation(file, field, f"at most {MAX_TEXT_LENGTH} characters, got {len(value)}")


def _name(file: str, field: str, value: Any, seen: set[str]) -> Iterator[Violation]:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        yield Violation(file, field, f"{value!r} must start with a letter and hold only letters, digits, '-', '_' "
                                     "and spaces")
    elif value.strip() in seen:
        yield Violation(file, field, f"{value!r} is used twice")
    else:
        seen.add(value.strip())


def _manifest_violations(root: Path, manifest: dict[str, Any]) -> Iterator[Violation]:
    file = MANIFEST
    for key in REQUIRED_MANIFEST_KEYS:
        if key not in manifest:
            yield Violation(file, key, "missing")
    if "locale" in manifest:
        yield from _locale_violations(root, manifest["locale"])
    if "storage" in manifest and not isinstance(manifest["storage"], bool):
        yield Violation(file, "storage", "must be true or false")
    if "service" in manifest and manifest["service"] != "DESK":
        yield Violation(file, "service", f'must be "DESK", got {manifest["service"]!r}')
    if "type" in manifest and manifest["type"] not in ("personal", "org"):
        yield Violation(file, "type", f'must be "personal" or "org", got {manifest["type"]!r}')
    if "modules" in manifest:
        yield from _widget_violations(root, manifest["modules"])
    if "whiteListedDomains" in manifest:
        domains = manifest["whiteListedDomains"]
        if not isinstance(domains, list):
            yield Violation(file, "whiteListedDomains", "must be a list of URLs")
        else:
            for index, domain in enumerate(domains):
                if not _is_url(domain):
                    yield Violation(file, f"whiteListedDomains[{index}]", f"{domain!r} is not a URL")
    if "cspDomains" in manifest:
        yield from _csp_violations(manifest["cspDomains"])
    if "connectors" in manifest:
        yield from _connector_violations(manifest["connectors"])
    if "config" in manifest:
        yield from _config_violations(manifest["config"])
    if "callbackListener" in manifest:
        yield from _callback_violations(manifest)


def _locale_violations(root: Path, locale: Any) -> Iterator[Violation]:
    file = MANIFEST
    if not isinstance(locale, list) or not all(isinstance(code, str) and code for code in locale):
        yield Violation(file, "locale", "must be a list of locale codes")
        return
    if "en" not in locale:
        yield Violation(file, "locale", 'must include "en"')
    for index, code in enumerate(locale):
        if code not in LOCALES:
            yield Violation(file, f"locale[{index}]", f"unknown locale code {code!r}")
        elif not (root / "app" / "translations" / f"{code}.json").is_file():
            yield Violation(file, f"locale[{index}]", f"the translations file app/translations/{code}.json is missing")


def _widget_violations(root: Path, modules: Any) -> Iterator[Violation]:
    file = MANIFEST
    if not isinstance(modules, dict):
        yield Violation(file, "modules", "must be an object")
        return
    widgets = modules.get("widgets")
    if "widgets" not in modules:
        yield Violation(file, "modules.widgets", "missing")
        return
    if not isinstance(widgets, list):
        yield Violation(file, "modules.widgets", "must be a list")
        return
    if not widgets:
        yield Violation(file, "modules.widgets", f"needs at least one widget (a channel-only extension too, e.g. "
                                                 f"at {WIDGET_LOCATION})")
        return
    names: set[str] = set()
    single: set[str] = set()
    for index, widget in enumerate(widgets):
        at = f"modules.widgets[{index}]"
        if not isinstance(widget, dict):
            yield Violation(file, at, "must be an object")
            continue
        yield from _name(file, f"{at}.name", widget.get("name"), names)
        location = widget.get("location")
        if location not in WIDGET_LOCATIONS:
            yield Violation(file, f"{at}.location", f"{location!r} is not a Desk widget location")
        elif location in SINGLE_WIDGET_LOCATIONS:
            if location in single:
                yield Violation(file, f"{at}.location", f"{location} may hold only one widget")
            single.add(location)
        url = widget.get("url")
        if "url" not in widget:
            yield Violation(file, f"{at}.url", "missing")
        elif not _is_url(url) and not (isinstance(url, str) and url.startswith("{")):
            yield from _project_file(root, file, f"{at}.url", url, images=False)
        for key in ("logo", "icon"):
            if key in widget:
                yield from _project_file(root, file, f"{at}.{key}", widget[key], images=True)


def _csp_violations(csp: Any) -> Iterator[Violation]:
    file = MANIFEST
    if not isinstance(csp, dict):
        yield Violation(file, "cspDomains", "must be an object")
        return
    sources = csp.get("connect-src")
    if not isinstance(sources, list):
        yield Violation(file, "cspDomains.connect-src", "must be a list of URLs")
        return
    if len(sources) > MAX_CSP_DOMAINS:
        yield Violation(file, "cspDomains.connect-src", f"at most {MAX_CSP_DOMAINS} entries, got {len(sources)}")
    seen: set[str] = set()
    for index, source in enumerate(sources):
        at = f"cspDomains.connect-src[{index}]"
        if not isinstance(source, str) or not all(_is_url(part) or part == "blob:" for part in source.split()):
            yield Violation(file, at, f"{source!r} is not a URL")
        elif source.strip() in seen:
            yield Violation(file, at, f"{source!r} is listed twice")
        else:
            seen.add(source.strip())


def _connector_violations(connectors: Any) -> Iterator[Violation]:
    file = MANIFEST
    if not isinstance(connectors, list):
        yield Violation(file, "connectors", "must be a list (empty when the extension has none)")
        return
    names: set[str] = set()
    for index, connector in enumerate(connectors):
        at = f"connectors[{index}]"
        if not isinstance(connector, dict) or not connector:
            yield Violation(file, at, "must be a non-empty object")
            continue
        yield from _name(file, f"{at}.connectionName", connector.get("connectionName"), names)
        for key in ("serviceName", "connectionLinkName"):
            yield from _text(file, f"{at}.{key}", connector.get(key), required=True)
        scope = connector.get("scope")
        if scope is not None and (
            not isinstance(scope, list) or not all(isinstance(item, str) and item.strip() for item in scope)
        ):
            yield Violation(file, f"{at}.scope", "must be a list of non-empty strings")


def _config_violations(config: Any) -> Iterator[Violation]:
    file = MANIFEST
    if not isinstance(config, list):
        yield Violation(file, "config", "must be a list")
        return
    if len(config) > MAX_CONFIG_PARAMS:
        yield Violation(file, "config", f"{len(config)} params: at most {MAX_CONFIG_PARAMS} are allowed")
    names: set[str] = set()
    for index, param in enumerate(config):
        at = f"config[{index}]"
        if not isinstance(param, dict) or not param:
            yield Violation(file, at, "must be a non-empty object")
            continue
        yield from _name(file, f"{at}.name", param.get("name"), names)
        for key in ("displayName", "description"):
            yield from _text(file, f"{at}.{key}", param.get(key))
        if "userdefined" in param and not isinstance(param["userdefined"], bool):
            yield Violation(file, f"{at}.userdefined", "must be true or false")
        if param.get("userdefined") is not True:
            continue
        if param.get("type") not in CONFIG_TYPES:
            yield Violation(file, f"{at}.type", f"a user-defined param needs a type among {', '.join(CONFIG_TYPES)}")
        for key in ("mandatory", "secure"):
            if not isinstance(param.get(key), bool):
                yield Violation(file, f"{at}.{key}", "a user-defined param needs it, true or false")


def _callback_violations(manifest: dict[str, Any]) -> Iterator[Violation]:
    file = MANIFEST
    listener = manifest["callbackListener"]
    if not isinstance(listener, dict):
        yield Violation(file, "callbackListener", "must be an object of event name to URL")
    else:
        for event, url in listener.items():
            if not _is_url(url):
                yield Violation(file, f"callbackListener.{event}", f"{url!r} is not a URL")
    if "secret" not in manifest:
        yield Violation(file, "secret", "required when callbackListener is present")
    elif not isinstance(manifest["secret"], str) or not manifest["secret"]:
        yield Violation(file, "secret", "must be a non-empty string")


def _resources_violations(root: Path, resource_list: dict[str, Any]) -> Iterator[Violation]:
    file = RESOURCES
    if "channel" not in resource_list:
        yield Violation(file, "channel", "missing: deskbridge's extension declares one channel")
        return
    channel = resource_list["channel"]
    if not isinstance(channel, dict):
        yield Violation(file, "channel", "must be one object (the toolkit reads a single channel, not a list)")
        return
    yield from _text(file, "channel.resourceName", channel.get("resourceName"), required=True)
    if "channelLogoPath" not in channel:
        yield Violation(file, "channel.channelLogoPath", "missing")
    else:
        logo = list(_project_file(root, file, "channel.channelLogoPath", channel["channelLogoPath"], images=True))
        yield from logo
        if not logo and (root / channel["channelLogoPath"].lstrip("/")).stat().st_size > MAX_LOGO_BYTES:
            yield Violation(file, "channel.channelLogoPath", f"the logo is larger than {MAX_LOGO_BYTES // 1000} KB")
    for key in ("acceptAttachments", "updateRecords", "includeQuotedMessage"):
        if key in channel and not isinstance(channel[key], bool):
            yield Violation(file, f"channel.{key}", "must be true or false")
    if "contentTypes" in channel:
        content_types = channel["contentTypes"]
        if not isinstance(content_types, list):
            yield Violation(file, "channel.contentTypes", "must be a list")
        else:
            for index, content_type in enumerate(content_types):
                if content_type not in CONTENT_TYPES:
                    yield Violation(file, f"channel.contentTypes[{index}]",
                                    f"{content_type!r} is not allowed: only text/plain and text/html")
    sync = channel.get("sync")
    if not isinstance(sync, dict):
        yield Violation(file, "channel.sync", "must be an object with the push URL (and the pull URL)")
    else:
        if not _is_url(sync.get("push")):
            yield Violation(file, "channel.sync.push", "must be a URL")
        if "pull" in sync and not _is_url(sync["pull"]):
            yield Violation(file, "channel.sync.pull", "must be a URL")
    if "redirectUrl" in channel and not _is_url(channel["redirectUrl"]):
        yield Violation(file, "channel.redirectUrl", "must be a URL")


def _package_violations(root: Path) -> Iterator[Violation]:
    """The zip holds app/** (files the toolkit knows), plugin-manifest.json and resources.json."""
    app = root / "app"
    if not app.is_dir():
        yield Violation("app", "(folder)", "missing")
        return
    count, total = 0, 0
    for folder, subfolders, names in os.walk(app):
        here = Path(folder)
        for subfolder in subfolders:
            if not FOLDER_NAME.fullmatch(subfolder):
                yield Violation(_relative(root, here / subfolder), "(folder name)",
                                "may hold only letters, digits, '_', '-' and '$'")
        for name in names:
            path = here / name
            relative = _relative(root, path)
            suffix = name if name.startswith(".") else PurePosixPath(name).suffix
            if suffix not in PACKED_SUFFIXES:
                yield Violation(relative, "(file)", "the toolkit leaves this kind of file out of the package")
                continue
            if not FILE_NAME.fullmatch(name):
                yield Violation(relative, "(file name)", "may hold only letters, digits, '.', '_', '-' and '$'")
            if len(name) > MAX_FILE_NAME_LENGTH:
                yield Violation(relative, "(file name)", f"at most {MAX_FILE_NAME_LENGTH} characters")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                yield Violation(relative, "(size)", f"{size} bytes: at most {MAX_FILE_BYTES // 1_000_000} MB a file")
            count += 1
            total += size
    if count == 0:
        yield Violation("app", "(folder)", "is empty")
    for name in (MANIFEST, RESOURCES):
        if (root / name).is_file():
            count += 1
            total += (root / name).stat().st_size
    if count > MAX_FILES:
        yield Violation("app", "(files)", f"{count} files to pack: at most {MAX_FILES}")
    if total > MAX_TOTAL_BYTES:
        yield Violation("app", "(size)", f"{total} bytes to pack: at most {MAX_TOTAL_BYTES // 1_000_000} MB in all")


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
