"""YAML as experiment and campaign files are read: safe, and a key given twice in one mapping is an error
(PyYAML keeps the last one silently, so a second `stage1:` would quietly replace the first)."""

from __future__ import annotations

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} on line {line} (first on line {seen[key]}); YAML would keep only "
                    "the last one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Like yaml.safe_load, refusing duplicate keys (a yaml.YAMLError naming the key and its lines)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
