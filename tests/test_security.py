"""Secrets stay out of reprs and dumps; nothing in the runtime unpickles.

The consumer's log is checked where a consumer really starts: at DEBUG in
test_hostile_input (in-process) and in the chaos test's `imagestream consume` log.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from consumers.config.settings import KafkaSettings, Settings
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import client_kwargs

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("consumers", "schemas", "loadtest")

# Each pattern is a way to run code hidden in data. A line may opt out with the reason
# in a "# unpickle-ok: ..." comment (none does today).
UNSAFE = {
    "pickle": re.compile(
        r"\b(import\s+(c?pickle|dill|cloudpickle|shelve)|from\s+(c?pickle|dill|cloudpickle|shelve)\s+import)\b"
    ),
    "pickle.load": re.compile(r"\b(c?pickle|dill|cloudpickle)\.loads?\("),
    "joblib.load": re.compile(r"\bjoblib\.load\("),
    "marshal.load": re.compile(r"\bmarshal\.loads?\("),
    "read_pickle": re.compile(r"\bread_pickle\("),
    "allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load": re.compile(r"\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)"),
    "torch.load": re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "use_safetensors=False": re.compile(r"use_safetensors\s*=\s*False"),
    "trust_remote_code": re.compile(r"trust_remote_code\s*=\s*True"),
}


def _secret_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every SecretStr field in the settings tree."""
    for name, info in model.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        for kind in kinds:
            if kind is SecretStr:
                yield f"{prefix}{name}"
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _secret_paths(kind, f"{prefix}{name}.")


def _env_name(path: str) -> str:
    return "IMAGESTREAM_" + path.upper().replace(".", "__")


def test_no_secret_reaches_a_repr_or_a_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = list(_secret_paths(Settings))
    assert {"kafka.sasl_password", "s3.secret_access_key", "milvus.token"} <= set(paths)
    secrets = {path: f"secret-{i}-{path}" for i, path in enumerate(paths)}
    for path, value in secrets.items():
        monkeypatch.setenv(_env_name(path), value)
    settings = Settings(_env_file=None)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        repr(S3Store(settings.s3)),
    ]
    for path, value in secrets.items():
        section, _, field = path.rpartition(".")
        owner = settings
        for part in section.split(".") if section else ():
            owner = getattr(owner, part)
        assert getattr(owner, field).get_secret_value() == value  # configured...
        for text in shown:
            assert value not in text, path  # ...and never shown


def test_sasl_credentials_reach_the_client_only() -> None:
    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="imagestream",
            sasl_password=SecretStr("hunter2-kafka"),
        ),
    )
    kwargs = client_kwargs(settings.kafka)
    assert kwargs["sasl_plain_password"] == "hunter2-kafka"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["ssl_context"] is not None
    assert "hunter2-kafka" not in repr(settings.kafka)


def _runtime_sources() -> Iterator[Path]:
    for package in RUNTIME:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_nothing_in_the_runtime_unpickles() -> None:
    found = []
    sources = list(_runtime_sources())
    assert len(sources) > 20  # the scan does see the code
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "unpickle-ok:" in line:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{number}: {name}: {line.strip()}"
                for name, pattern in UNSAFE.items()
                if pattern.search(line)
            ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("import pickle", "pickle"),
        ("data = pickle.loads(blob)", "pickle.load"),
        ("state = torch.load(path)", "torch.load"),
        ("arr = np.load(f, allow_pickle=True)", "allow_pickle"),
        ("cfg = yaml.load(text)", "yaml.load"),
        ("model = joblib.load(path)", "joblib.load"),
    ],
)
def test_the_scan_catches_each_pattern(line: str, name: str) -> None:
    assert UNSAFE[name].search(line)


def test_the_scan_lets_the_safe_forms_through() -> None:
    assert not UNSAFE["torch.load"].search("state = torch.load(path, weights_only=True)")
    assert not UNSAFE["yaml.load"].search("cfg = yaml.load(text, Loader=yaml.SafeLoader)")
