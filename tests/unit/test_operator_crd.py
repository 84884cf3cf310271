"""The CRD's schema and the pydantic spec models say the same thing: field names, required fields, defaults."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lorasweep_operator import spec as specs
from lorasweep_operator.planning import plan
from lorasweep_trainer.config import RENAMED_MODEL_FIELDS, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "deploy" / "crd" / "lorasweeps.lorasweep.dev.yaml"


def crd() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return document


def spec_schema() -> dict[str, Any]:
    version = crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None`, `list[X]`, `Annotated[...]`, if any."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            if (found := _model_of(arg)) is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def compare(model: type[BaseModel], schema: dict[str, Any], where: str, problems: list[str]) -> None:
    properties = schema.get("properties", {})
    if model is ModelConfig:  # a renamed field stays in the schema only for its CEL rule's message
        properties = {key: node for key, node in properties.items() if key not in RENAMED_MODEL_FIELDS}
    fields = {(info.alias or name): (name, info) for name, info in model.model_fields.items()}
    if set(fields) != set(properties):
        problems.append(f"{where}: pydantic {sorted(fields)} != CRD {sorted(properties)}")
    required = sorted(alias for alias, (_, info) in fields.items() if info.is_required())
    if required != sorted(schema.get("required", [])):
        problems.append(f"{where}: required pydantic {required} != CRD {sorted(schema.get('required', []))}")
    for alias, (_, info) in fields.items():
        node = properties.get(alias)
        if node is None:
            continue
        node_for_model = node["items"] if node.get("type") == "array" and "items" in node else node
        nested = _model_of(info.annotation)
        if nested is not None:
            compare(nested, node_for_model, f"{where}.{alias}", problems)
        if info.is_required():
            continue
        default = _plain(info.get_default(call_default_factory=True))
        if default is None or (isinstance(default, dict | list) and not default and "default" not in node):
            if "default" in node and node["default"] not in ({}, []):
                problems.append(f"{where}.{alias}: CRD default {node['default']!r} but pydantic has none")
            continue
        if nested is not None and isinstance(default, dict):
            if node.get("default") not in ({}, default):
                problems.append(f"{where}.{alias}: an object with defaults needs `default: {{}}` (or its defaults)")
            continue
        if node.get("default") != default:
            problems.append(f"{where}.{alias}: CRD default {node.get('default')!r} != pydantic {default!r}")


def test_crd_and_pydantic_models_agree() -> None:
    problems: list[str] = []
    compare(specs.LoraSweepSpec, spec_schema(), "spec", problems)
    assert problems == []


def test_a_renamed_model_field_is_kept_in_the_crd_to_say_its_new_name() -> None:
    model = spec_schema()["properties"]["model"]
    messages = [rule["message"] for rule in model["x-kubernetes-validations"]]
    for old, new in RENAMED_MODEL_FIELDS.items():
        assert old in model["properties"] and new in model["properties"]
        assert any(f"model.{old} was renamed to model.{new}: write model.{new}" in m for m in messages), messages


def test_crd_identity_and_printer_columns() -> None:
    document = crd()
    names = document["spec"]["names"]
    assert (document["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        specs.GROUP,
        specs.KIND,
        specs.PLURAL,
        [specs.SHORT_NAME],
    )
    version = document["spec"]["versions"][0]
    assert version["name"] == specs.VERSION and version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Trials", "Succeeded", "Failed", "Stopped", "Running", "Best", "Age"]
    status_fields = set(version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"])
    # `finished` exists on the wire only: LoraSweepStatus expands it into outcomes (see its to_patch).
    assert status_fields == {(info.alias or name) for name, info in specs.LoraSweepStatus.model_fields.items()} | {
        "finished"
    }


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: absent fields with a default get it, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for key, node in schema["properties"].items():
            if key not in result and "default" in node:
                result[key] = node["default"]
            if key in result:
                result[key] = apply_defaults(result[key], node)
        return result
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def test_crd_defaulting_gives_the_same_sweep_as_pydantic_defaults() -> None:
    minimal = {
        "image": "trainer:1",
        "dataset": {"source": "s3://bucket/clips/"},
        "search": {"groups": [{"name": "lr", "values": [{"learningRate": 1e-3}, {"lora": {"rank": 8, "alpha": 16}}]}]},
        "storage": {"output": "s3://bucket/out/"},
    }
    defaulted = apply_defaults(minimal, spec_schema())
    assert defaulted["training"]["lora"]["rank"] == 16
    assert defaulted["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "learningRate" not in defaulted["search"]["groups"][0]["values"][1]  # overrides carry no defaults
    from_crd = specs.parse_spec(defaulted)
    from_pydantic = specs.parse_spec(minimal)
    assert from_crd == from_pydantic
    assert plan(from_crd, "s") == plan(from_pydantic, "s")
