"""The upload's OpenAPI entry: its request body and every strategy hyperparameter with its range
(the route reads them from the query string or the form itself, so FastAPI cannot list them)."""

from __future__ import annotations

from typing import Any

from adapters_store.settings import Settings
from adapters_store.strategy_params import STRATEGY_NAMES, StrategyOverrides, strategies_taking
from service.uploads import RAW_TYPES

_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
           ("exclusiveMaximum", "<"))


def _value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an ``X | None`` field's schema."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    return {k: v for k, v in branches[0].items() if k != "title"}


def _default_setting(name: str) -> str:
    """The settings that give ``name``'s default, per strategy family that has its own."""
    fields = Settings.model_fields
    found = [(f"safm_{name}", "safm, acm"), (f"sparse_{name}", "sparse, sparse_merged"),
             (name, "others")]
    names = [(f, who) for f, who in found if f in fields]
    if not names:
        return "the strategy's"
    if len(names) == 1:
        return f"ADAPTERD_{names[0][0].upper()}"
    return " or ".join(f"ADAPTERD_{f.upper()} ({who})" for f, who in names)


def hyperparameter_docs() -> dict[str, tuple[dict[str, Any], str]]:
    """Per hyperparameter: its value schema (with bounds) and a description naming the range,
    the strategies it applies to and the setting that gives its default."""
    props = StrategyOverrides.model_json_schema()["properties"]
    docs = {}
    for name, prop in props.items():
        schema = _value_schema(prop)
        bounds = [f"{sign} {schema[key]}" for key, sign in _BOUNDS if key in schema]
        if "enum" in schema:
            bounds.append("one of " + ", ".join(map(str, schema["enum"])))
        parts = [prop["description"]] if prop.get("description") else []
        if name == "forced_layers":
            parts.append("layer indexes ≥ 0, as '2,3' or repeated")
        if bounds:
            parts.append("range: " + " and ".join(bounds))
        taking = strategies_taking(name)
        parts.append("every strategy" if len(taking) == len(STRATEGY_NAMES)
                     else "strategies " + ", ".join(taking))
        parts.append(f"default: {_default_setting(name)}")
        docs[name] = (schema, "; ".join(parts))
    return docs


def upload_openapi() -> dict[str, Any]:
    """openapi_extra for the upload route: body, and each hyperparameter as a query parameter
    and as an optional multipart field (the route takes either, not both)."""
    docs = hyperparameter_docs()
    for name, default in (("text_field", "text"), ("label_field", "label"),
                          ("text_pair_field", "text_pair")):
        docs[name] = ({"type": "string", "maxLength": 100},
                      f"the CSV column / JSONL key holding the {default.replace('_', ' ')} "
                      f"(default '{default}'); naming any column makes the others ignored")
    parameters = [{"name": name, "in": "query", "required": False, "schema": schema,
                   "description": description} for name, (schema, description) in docs.items()]
    fields = {"file": {"type": "string", "format": "binary"},
              "strategy": {"type": "string", "description": "as the query parameter"},
              **{name: {"type": "string", "description": description}
                 for name, (_, description) in docs.items()}}
    return {
        "parameters": parameters,
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": fields}},
            **{ct: {"schema": {"type": "string", "format": "binary"}} for ct in RAW_TYPES},
        }},
    }
