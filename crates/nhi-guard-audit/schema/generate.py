#!/usr/bin/env python3
"""Generates the JSON Schemas the audit crate's tests validate its records against.

Reads the OCSF schema source (https://github.com/ocsf/ocsf-schema, a checkout of
the release tag) and writes one JSON Schema (draft-07) per event class the crate
writes, with every object the class references, to `ocsf-<version>/<class>.json`
next to this script:

    git clone https://github.com/ocsf/ocsf-schema && git -C ocsf-schema checkout 1.3.0
    python3 crates/nhi-guard-audit/schema/generate.py ocsf-schema

The schema is compiled as the OCSF server (https://github.com/ocsf/ocsf-server,
`Schema.Cache` and `Schema.JsonSchema`) compiles the core schema, without
extensions, and exported as its `/export/json_schema/<class>?profiles=...` does
with the profiles the crate's records declare in `metadata.profiles` (as the
server's validator applies them: an attribute a profile brings is part of the
class only when the record declares that profile):

- `$include` files are merged under the including file's attributes; the
  attributes of an included profile belong to that profile;
- `extends` chains are merged, parent first; classes without a `uid` (and
  objects whose name starts with `_`) are only bases;
- a class's `class_uid`, `category_uid` and `type_uid` get one-value (or
  per-activity) enums; every `timestamp_t` attribute gets its `_dt` sibling
  (the datetime profile); an attribute without a requirement is optional;
- attributes take their type, enum and array-ness from the dictionary; a type
  that is not a dictionary type names an object;
- every object is closed (`additionalProperties: false`) except one that defines
  no attributes (`object`, the type of `unmapped`), which is free-form;
  `required` lists the required attributes, `at_least_one` constraints become
  `anyOf` and `just_one` constraints `oneOf`; an attribute with an enum gets
  `enum` (or `const` for one value).

Two differences from the server's export, both stricter or equal: the enum is
kept on every integer or string type (the server's export drops it on `long_t`
attributes, which leaves `type_uid` unconstrained), and an attribute whose
`profile` a class sets to null (`api` in API Activity, brought by the cloud
profile) belongs to the class whatever the profiles (the server's export drops
it when no profile is selected).

Only the Python standard library is needed. The output is deterministic (sorted
keys), so regenerating from the same source gives the same bytes.
"""

import argparse
import json
import os
import subprocess
import sys

# The classes nhi-guard-audit writes (src/ocsf.rs), each with the profiles its
# records declare in `metadata.profiles`.
CLASSES = {"api_activity": [], "application_lifecycle": []}
EXPECTED_VERSION = "1.3.0"
SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
ID_BASE = "https://schema.ocsf.io/schema/classes/"


def deep_merge(left, right):
    """Merges `right` into `left`: maps recursively (an empty map yields to the
    other side), any other value from `right`, a null included."""
    if left is None:
        return right
    if right is None:
        return left
    out = dict(left)
    for key, rv in right.items():
        lv = left.get(key)
        if key in left and isinstance(lv, dict) and isinstance(rv, dict):
            if not lv:
                out[key] = rv
            elif not rv:
                out[key] = lv
            else:
                out[key] = deep_merge(lv, rv)
        else:
            out[key] = rv
    return out


class Source:
    """The OCSF schema source tree."""

    def __init__(self, root):
        self.root = root
        self.included_cache = {}

    def load(self, rel):
        with open(os.path.join(self.root, rel), encoding="utf-8") as f:
            return json.load(f)

    def included(self, rel):
        """An included file, its attributes tagged with the profile it defines
        and merged over its annotations."""
        if rel not in self.included_cache:
            data = self.load(rel)
            profile = data.get("name") if data.get("meta") == "profile" else None
            annotations = data.get("annotations")
            attributes = {}
            for name, attr in (data.get("attributes") or {}).items():
                if attr is not None and profile is not None:
                    attr = dict(attr, profile=profile)
                if annotations is not None:
                    attr = deep_merge(annotations, attr)
                attributes[name] = attr
            data["attributes"] = attributes
            self.included_cache[rel] = data
        return self.included_cache[rel]

    def read(self, rel):
        """A class or object file with its `$include`s resolved."""
        data = self.load(rel)
        attributes = data.get("attributes")
        if attributes is None:
            return data
        include = attributes.get("$include")
        if include is not None:
            for file in [include] if isinstance(include, str) else include:
                rest = {k: v for k, v in attributes.items() if k != "$include"}
                attributes = deep_merge(self.included(file)["attributes"], rest)
        merged = {}
        for name, attr in attributes.items():
            if isinstance(attr, dict) and "$include" in attr:
                rest = {k: v for k, v in attr.items() if k != "$include"}
                attr = deep_merge(self.included(attr["$include"]), rest)
            merged[name] = attr
        data["attributes"] = merged
        return data

    def read_dir(self, rel, recursive):
        items = {}
        top = os.path.join(self.root, rel)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            if not recursive:
                dirnames.clear()
            for file in sorted(filenames):
                if file.endswith(".json"):
                    path = os.path.relpath(os.path.join(dirpath, file), self.root)
                    item = self.read(path)
                    name = item["name"]
                    if name in items:
                        sys.exit(f"{path}: {name} defined twice")
                    # A patch (an item that extends its own name, or has no
                    # name) only occurs in extensions, which are not compiled.
                    if item.get("extends") == name:
                        sys.exit(f"{path}: patches {name}: not supported")
                    items[name] = item
        return items


def resolve_extends(items):
    def resolve(item):
        parent = item.get("extends")
        if parent is None:
            return item
        if parent not in items:
            sys.exit(f"{item['name']} extends undefined {parent}")
        base = resolve(items[parent])
        attributes = deep_merge(base.get("attributes"), item.get("attributes")) or {}
        attributes = {k: v for k, v in attributes.items() if v is not None}
        out = dict(base)
        for key, value in item.items():
            if key == "profiles" and key in base and value is not None:
                out[key] = list(dict.fromkeys(base[key] + value))
            elif key != "profiles" or key not in base:
                out[key] = value
        out["attributes"] = attributes
        return out

    return {name: resolve(item) for name, item in items.items()}


PRIMITIVES = {
    "string_t": "string",
    "integer_t": "integer",
    "long_t": "integer",
    "float_t": "number",
    "boolean_t": "boolean",
}


class Compiler:
    def __init__(self, source):
        self.source = source
        self.version = source.load("version.json")["version"]
        self.categories = source.load("categories.json")["attributes"]
        self.profiles = {
            source.load(os.path.join("profiles", f))["name"]
            for f in os.listdir(os.path.join(source.root, "profiles"))
            if f.endswith(".json")
        }
        dictionary = source.load("dictionary.json")
        self.types = dictionary["types"]["attributes"]
        attributes = {}
        for name, attr in dictionary["attributes"].items():
            type_ = attr.get("type") or "object_t"
            if type_ not in self.types:
                attr = dict(attr, type="object_t", object_type=type_)
            attributes[name] = attr
            if attr.get("type") == "timestamp_t":
                attributes[name + "_dt"] = dict(attr, type="datetime_t", type_name="Datetime")
        self.dictionary = attributes

        classes = resolve_extends(source.read_dir("events", recursive=True))
        self.classes = {
            name: self.finish(self.enrich_class(c))
            for name, c in classes.items()
            if "uid" in c or name == "base_event"
        }
        objects = resolve_extends(source.read_dir("objects", recursive=False))
        self.objects = {
            name: self.finish(o) for name, o in objects.items() if not name.startswith("_")
        }

    def enrich_class(self, cls):
        category = self.categories.get(cls.get("category"))
        category_uid = category["uid"] if category else 0
        class_uid = category_uid * 1000 + cls.get("uid", 0)
        attributes = dict(cls["attributes"])
        activities = (attributes.get("activity_id") or attributes.get("disposition_id") or {}).get(
            "enum"
        ) or {}
        type_uids = {str(class_uid * 100 + int(k)): {"caption": v.get("caption")} for k, v in activities.items()}
        type_uids[str(class_uid * 100)] = {"caption": "Unknown"}
        attributes["type_uid"] = dict(attributes.get("type_uid") or {}, enum=type_uids)
        attributes["class_uid"] = dict(
            attributes.get("class_uid") or {}, enum={str(class_uid): {"caption": cls.get("caption")}}
        )
        if category:
            attributes["category_uid"] = dict(
                attributes.get("category_uid") or {},
                enum={str(category_uid): {"caption": category["caption"]}},
            )
        return dict(cls, uid=class_uid, attributes=attributes)

    def finish(self, item):
        """The datetime siblings of timestamps, and the default requirement."""
        attributes = dict(item["attributes"])
        for name, attr in item["attributes"].items():
            if (self.dictionary.get(name) or {}).get("type") == "timestamp_t":
                attributes[name + "_dt"] = dict(attr, profile="datetime", requirement="optional")
        for name, attr in attributes.items():
            attributes[name] = dict({"requirement": "optional"}, **attr)
        return dict(item, attributes=attributes)

    def enrich(self, item, profiles, refs):
        """`item`'s attributes of no profile or of one in `profiles`, completed
        from the dictionary; adds every object they reference, recursively, to
        `refs`."""
        attributes = {}
        for name, attr in item["attributes"].items():
            if attr.get("profile") is not None and attr["profile"] not in profiles:
                continue
            base = self.dictionary.get(name)
            if base is None:
                sys.exit(f"{item['name']}.{name} is not in the dictionary")
            attr = deep_merge(base, attr)
            attributes[name] = attr
            object_type = attr.get("object_type")
            if object_type is not None and object_type not in refs:
                if object_type not in self.objects:
                    sys.exit(f"{item['name']}.{name}: undefined object {object_type}")
                refs[object_type] = None
                refs[object_type] = self.enrich(self.objects[object_type], profiles, refs)
        return dict(item, attributes=attributes)

    def json_type(self, type_):
        base = type_ if type_ in PRIMITIVES else (self.types.get(type_) or {}).get("type")
        if base not in PRIMITIVES:
            sys.exit(f"type {type_} has no JSON type")
        return PRIMITIVES[base]

    def encode_attribute(self, attr):
        schema = {"title": attr.get("caption")}
        type_ = attr.get("type")
        if type_ == "object_t":
            schema["$ref"] = "#/$defs/" + attr["object_type"].replace("/", "_")
        elif type_ == "json_t":
            pass
        else:
            schema["type"] = self.json_type(type_)
            enum = attr.get("enum")
            if enum:
                integer = schema["type"] == "integer"
                values = sorted(int(k) if integer else k for k in enum)
                if len(values) == 1:
                    schema["const"] = values[0]
                else:
                    schema["enum"] = values
        if attr.get("is_array"):
            items = {k: schema.pop(k) for k in ("$ref", "type", "enum", "const") if k in schema}
            schema["type"] = "array"
            schema["items"] = items
        return schema

    def encode_item(self, item):
        constraints = item.get("constraints") or {}
        just_one = constraints.get("just_one") or []
        at_least_one = constraints.get("at_least_one") or []
        properties = {}
        required = []
        for name, attr in sorted(item["attributes"].items()):
            properties[name] = self.encode_attribute(attr)
            if attr.get("requirement") == "required" and name not in just_one and name not in at_least_one:
                required.append(name)
        schema = {
            "title": item.get("caption"),
            "type": "object",
            "properties": properties,
            "additionalProperties": not properties,
        }
        if required:
            schema["required"] = sorted(required)
        present = [n for n in just_one if n in properties]
        if present:
            schema["oneOf"] = [
                {"required": [n], "not": {"required": [o for o in present if o != n]}} for n in present
            ]
        present = [n for n in at_least_one if n in properties]
        if present:
            schema["anyOf"] = [{"required": [n]} for n in present]
        return schema

    def class_schema(self, name, profiles, comment):
        cls = self.classes.get(name)
        if cls is None:
            sys.exit(f"no class {name}")
        unknown = [p for p in profiles if p not in self.profiles]
        if unknown:
            sys.exit(f"undefined profiles {unknown}")
        refs = {}
        cls = self.enrich(cls, set(profiles), refs)
        schema = {
            "$schema": SCHEMA_DRAFT,
            "$id": ID_BASE + name,
            "$comment": comment,
        }
        schema.update(self.encode_item(cls))
        schema["$defs"] = {k.replace("/", "_"): self.encode_item(o) for k, o in sorted(refs.items())}
        return schema


def source_commit(root):
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ocsf_schema", help="an ocsf-schema checkout (tag %s)" % EXPECTED_VERSION)
    parser.add_argument("--commit", help="the source commit, when ocsf_schema is not a git work tree")
    parser.add_argument("--out", default=os.path.join(here, "ocsf-" + EXPECTED_VERSION))
    args = parser.parse_args()

    compiler = Compiler(Source(args.ocsf_schema))
    if compiler.version != EXPECTED_VERSION:
        sys.exit(f"the source is OCSF {compiler.version}, not {EXPECTED_VERSION}")
    commit = args.commit or source_commit(args.ocsf_schema)
    if not commit:
        sys.exit("name the source commit with --commit")
    os.makedirs(args.out, exist_ok=True)
    for name, profiles in CLASSES.items():
        comment = (
            f"OCSF {compiler.version} class {name} (core schema, profiles: {', '.join(profiles) or 'none'}), "
            f"generated by crates/nhi-guard-audit/schema/generate.py from "
            f"https://github.com/ocsf/ocsf-schema commit {commit}. Do not edit: regenerate."
        )
        schema = compiler.class_schema(name, profiles, comment)
        path = os.path.join(args.out, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(schema, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        print(f"{path}: {len(schema['properties'])} attributes, {len(schema['$defs'])} objects")


if __name__ == "__main__":
    main()
